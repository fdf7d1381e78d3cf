/**
 * PROBES trap 1: the stock circuit relay v2 server kept every byte the
 * dialing side uploaded in memory for as long as the relayed connection was
 * open (its `pipe(src, dst, src)` wrapped the dialer's stream twice, and one
 * wrapper's buffer was never read). patches/@libp2p+circuit-relay-v2*.patch
 * replaces that piping with one that holds nothing and honours
 * backpressure. This uploads 256 MiB through a relay in its own process
 * and checks the relay's live memory, after forced collections, while the
 * relayed connection stays open.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { execa, type ResultPromise } from 'execa'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMeshNode, type MeshNode } from './node.ts'
import { toDuplex } from './stream-duplex.ts'

const FIXTURE = fileURLToPath(new URL('./relay-memory.fixture.ts', import.meta.url))
const PROTOCOL = '/coder-mesh-test/sink/1.0.0'
const STALL_PROTOCOL = '/coder-mesh-test/stall/1.0.0'
const MiB = 1024 * 1024
const UPLOAD = 256 * MiB
/** Live memory the upload may leave in the relay. */
const MAX_GROWTH = 48 * MiB

interface Memory {
  heapUsed: number
  arrayBuffers: number
  rss: number
}

describe('circuit relay memory', () => {
  let relayProcess: ResultPromise
  let lines: AsyncIterator<string>
  let relayAddr: string
  let agent: MeshNode
  let client: MeshNode

  async function nextLine(): Promise<string> {
    const next = await lines.next()
    if (next.done === true) throw new Error('the relay process ended')
    return next.value
  }

  async function relayMemory(): Promise<Memory> {
    relayProcess.stdin?.write('mem\n')
    return JSON.parse(await nextLine()) as Memory
  }

  beforeAll(async () => {
    relayProcess = execa(process.execPath, ['--expose-gc', FIXTURE], {
      stdin: 'pipe',
      buffer: false,
      stderr: 'inherit',
    })
    lines = relayProcess.iterable()[Symbol.asyncIterator]() as AsyncIterator<string>
    relayAddr = (JSON.parse(await nextLine()) as { addr: string }).addr

    agent = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [`${relayAddr}/p2p-circuit`],
      webrtc: false,
    })
    await agent.handle(
      PROTOCOL,
      async (stream) => {
        // Counts and drops what arrives; answers the count at the end.
        const duplex = toDuplex(stream)
        let bytes = 0
        duplex.on('data', (chunk: Buffer) => (bytes += chunk.length))
        await once(duplex, 'end')
        duplex.end(String(bytes))
      },
      { runOnLimitedConnection: true },
    )
    // Reads nothing: the relay must hold the sender back, not buffer for it.
    await agent.handle(STALL_PROTOCOL, (stream) => void toDuplex(stream), {
      runOnLimitedConnection: true,
    })
    client = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      webrtc: false,
    })
  }, 30_000)

  afterAll(async () => {
    await Promise.all([client?.stop(), agent?.stop()])
    relayProcess?.stdin?.end()
    relayProcess?.kill()
    await relayProcess?.catch(() => undefined)
  })

  it('should not keep uploaded bytes while the relayed connection stays open', async () => {
    const target = multiaddr(`${relayAddr}/p2p-circuit/p2p/${agent.peerId.toString()}`)
    const connection = await client.dial(target)
    expect(connection.remoteAddr.toString()).toContain('/p2p-circuit')
    const before = await relayMemory()

    const duplex = toDuplex(await connection.newStream(PROTOCOL, { runOnLimitedConnection: true }))
    const chunk = Buffer.alloc(64 * 1024, 7)
    const started = Date.now()
    for (let sent = 0; sent < UPLOAD; sent += chunk.length) {
      if (!duplex.write(chunk)) await once(duplex, 'drain')
    }
    duplex.end()
    let answer = ''
    for await (const data of duplex) answer += String(data)
    const seconds = (Date.now() - started) / 1000
    expect(Number(answer)).toBe(UPLOAD)

    // The relayed connection is still open: whatever the relay kept is live.
    expect(connection.status).toBe('open')
    const after = await relayMemory()
    const growth = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers)
    console.log(
      `[relay] 256 MiB up in ${seconds.toFixed(1)} s; relay live memory ` +
        `${((before.heapUsed + before.arrayBuffers) / MiB).toFixed(1)} -> ` +
        `${((after.heapUsed + after.arrayBuffers) / MiB).toFixed(1)} MiB, ` +
        `rss ${(after.rss / MiB).toFixed(0)} MiB`,
    )
    expect(growth).toBeLessThan(MAX_GROWTH)
    await connection.close()
  }, 120_000)

  // The patched piping pauses the sending side while the far side cannot
  // take more. (The stock relay held this sender back too, by other means;
  // this guards the patch's pause/resume, not the original leak.)
  it('should hold a sender back while the far end reads nothing', async () => {
    const target = multiaddr(`${relayAddr}/p2p-circuit/p2p/${agent.peerId.toString()}`)
    const connection = await client.dial(target)
    const before = await relayMemory()
    const duplex = toDuplex(
      await connection.newStream(STALL_PROTOCOL, { runOnLimitedConnection: true }),
    )
    duplex.on('error', () => undefined)
    // Write for 5 s, or until 128 MiB went out; count what the stream took.
    const chunk = Buffer.alloc(64 * 1024, 9)
    const deadline = Date.now() + 5000
    let accepted = 0
    while (accepted < 128 * MiB && Date.now() < deadline) {
      if (!duplex.write(chunk)) {
        const drained = await Promise.race([
          once(duplex, 'drain').then(() => true),
          new Promise<boolean>((r) => setTimeout(() => r(false), deadline - Date.now())),
        ])
        if (!drained) break
      }
      accepted += chunk.length
    }
    const after = await relayMemory()
    const growth = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers)
    console.log(
      `[relay] stalled reader: the sender got ${(accepted / MiB).toFixed(0)} MiB out; ` +
        `relay live memory grew ${(growth / MiB).toFixed(1)} MiB`,
    )
    // Windows and buffers along the way (yamux windows of 16 MiB, read buffers), no more.
    expect(accepted).toBeLessThan(96 * MiB)
    expect(growth).toBeLessThan(MAX_GROWTH)
    duplex.destroy()
    await connection.close().catch(() => undefined)
  }, 60_000)
})
