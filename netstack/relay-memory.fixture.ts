/**
 * A circuit relay in a process of its own, for relay-memory.test.ts (run
 * with `node --expose-gc`): the relay server as node.ts configures it for
 * the coordinator. Prints `{"addr": ...}`, then answers each `mem` line on
 * stdin with its memory after two forced collections.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createInterface } from 'node:readline'
import { createMeshNode } from './node.ts'

const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('run with --expose-gc')

const relay = await createMeshNode({
  privateKey: await generateKeyPair('Ed25519'),
  listen: ['/ip4/127.0.0.1/tcp/0'],
  relayServer: { maxReservations: 10 },
})
process.stdout.write(JSON.stringify({ addr: relay.getMultiaddrs()[0]!.toString() }) + '\n')

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() !== 'mem') continue
  gc()
  await new Promise((resolve) => setTimeout(resolve, 50))
  gc()
  const m = process.memoryUsage()
  process.stdout.write(
    JSON.stringify({ heapUsed: m.heapUsed, arrayBuffers: m.arrayBuffers, rss: m.rss }) + '\n',
  )
}
await relay.stop()
