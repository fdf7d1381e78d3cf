/**
 * A port forward over the WebRTC path, for the bench. The CLI's
 * `port-forward --path` offers `direct` (TCP) and `relay`, and `any` picks
 * direct TCP whenever it is there, which on one machine it always is; so
 * this process reaches the agent the way a client behind a NAT would: a
 * relayed connection first (netstack/dial.ts with no direct addresses),
 * upgraded over WebRTC, and then it forwards each local connection on the
 * WebRTC connection with the same pieces as the CLI (the tcp protocol's
 * request and status from netstack/forward.ts, netstack/bridge.ts).
 *
 *   CODER_MESH_ICE_SERVERS=stun:... BENCH_URL=... BENCH_TOKEN=... \
 *     node bench/webrtc-forward.ts WORKSPACE REMOTE_PORT
 *
 * Prints `Forwarding 127.0.0.1:PORT` once the WebRTC connection is up.
 */
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { bridge } from '../netstack/bridge.ts'
import { TCP_PROTOCOL } from '../netstack/constants.ts'
import { bestConnection, dialAgent, openMeshStream, pathKind } from '../netstack/dial.ts'
import { encodeForwardRequest, readForwardStatus } from '../netstack/forward.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode } from '../netstack/node.ts'
import { ApiClient } from '../sdk/api-client.ts'

const UPGRADE_WAIT_MS = 60_000

const [workspace, remoteText] = process.argv.slice(2)
const remote = Number(remoteText)
const api = new ApiClient({ url: process.env.BENCH_URL ?? '', token: process.env.BENCH_TOKEN })

const privateKey = await newPeerKey()
const node = await createMeshNode({ privateKey, listen: [] })
const answer = await api.connect(workspace ?? '', peerIdFromPrivateKey(privateKey).toString())
const agent = answer.agent.peerId
await dialAgent(node, { peerId: agent, addrs: [], relays: answer.relays }, { upgrade: true })

const deadline = Date.now() + UPGRADE_WAIT_MS
while (pathKind(bestConnection(node, agent) ?? node.getConnections()[0]!) !== 'webrtc') {
  if (Date.now() > deadline) {
    process.stderr.write('no WebRTC connection came up\n')
    process.exit(1)
  }
  await new Promise((r) => setTimeout(r, 100))
}

const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
  socket.on('error', () => undefined)
  void (async () => {
    const connection = bestConnection(node, agent)
    if (connection === undefined) return socket.resetAndDestroy()
    const duplex = await openMeshStream(connection, TCP_PROTOCOL, answer.ticket)
    duplex.on('error', () => undefined)
    duplex.write(encodeForwardRequest(remote))
    if (!(await readForwardStatus(duplex))) {
      duplex.destroy()
      return socket.resetAndDestroy()
    }
    await bridge(socket, duplex)
  })().catch(() => socket.resetAndDestroy())
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
process.stdout.write(`Forwarding 127.0.0.1:${(server.address() as AddressInfo).port}\n`)
process.on('SIGINT', () => {
  server.close()
  void Promise.resolve(node.stop()).finally(() => process.exit(0))
})
