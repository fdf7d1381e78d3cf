import { execa } from 'execa'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const NODE_TS = fileURLToPath(new URL('./node.ts', import.meta.url))

/**
 * Starts a node in a fresh process (the test runner's own process may have
 * loaded WebRTC for other tests) and reports whether node-datachannel's
 * native library is mapped into it, before and after a WebRTC dial attempt.
 */
const PROBE = `
import { readFileSync } from 'node:fs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
const { createMeshNode } = await import(process.env.NODE_TS)
const loaded = () => readFileSync('/proc/self/maps', 'utf8').includes('node_datachannel')
const node = await createMeshNode({
  privateKey: await generateKeyPair('Ed25519'),
  listen: ['/ip4/127.0.0.1/tcp/0'],
  webrtc: { iceServers: [] },
})
await new Promise((r) => setTimeout(r, 1500))
const idle = loaded()
const other = await generateKeyPair('Ed25519')
const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
const target = '/ip4/127.0.0.1/tcp/1/p2p/' + node.peerId.toString() +
  '/p2p-circuit/webrtc/p2p/' + peerIdFromPrivateKey(other).toString()
await node.dial(multiaddr(target), { signal: AbortSignal.timeout(3000) }).catch(() => undefined)
console.log(JSON.stringify({ idle, afterDial: loaded() }))
await node.stop()
process.exit(0)
`

describe('lazyWebRTC', () => {
  it('should leave WebRTC unloaded on an idle listening node until it is used', async () => {
    const run = await execa(
      process.execPath,
      ['--disable-warning=ExperimentalWarning', '--input-type=module', '-e', PROBE],
      { env: { NODE_TS }, cwd: fileURLToPath(new URL('..', import.meta.url)), timeout: 30_000 },
    )
    const result = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as Record<string, boolean>

    // About 21 MiB of an idle agent's memory is WebRTC's module and its
    // native library; an agent nobody upgrades to WebRTC never needs them.
    expect(result).toEqual({ idle: false, afterDial: true })
  })
})
