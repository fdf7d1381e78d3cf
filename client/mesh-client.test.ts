/**
 * The CLI's shared mesh plumbing against a real libp2p agent node and a
 * stand-in for the coordinator's connect endpoint (real tickets, with a
 * lifetime the test picks): one connection for all streams, ticket renewal
 * before expiry (same peer id), and dialing again after the connection dies
 * or the agent moves.
 */
import type { PrivateKey } from '@libp2p/interface'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { PING_PROTOCOL } from '../netstack/constants.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { createPinger } from '../netstack/ping.ts'
import { serveMeshProtocol } from '../netstack/serve.ts'
import { newTicketKeyPair, signTicket } from '../netstack/ticket.ts'
import { ApiClient } from '../sdk/api-client.ts'
import { createLogger } from '../sdk/logger.ts'
import { openWorkspaceMesh, type WorkspaceMesh } from './mesh-client.ts'
import type { ConnectResponse } from '../sdk/api-types.ts'

const keys = newTicketKeyPair()
const log = createLogger('mesh:test', 'silent')

/** An agent node answering PING_PROTOCOL behind the ticket check. */
async function startAgent(privateKey: PrivateKey): Promise<MeshNode> {
  const node = await createMeshNode({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'] })
  const authority = { agentPeerId: node.peerId.toString(), publicKey: () => keys.publicKey }
  await serveMeshProtocol(node, PING_PROTOCOL, authority, (duplex) => void duplex.pipe(duplex), log)
  return node
}

/** Answers POST /api/v1/workspaces/dev/connect with `answer(peerId)`; 404 otherwise. */
async function startConnectEndpoint(answer: (peerId: string) => ConnectResponse): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/api/v1/workspaces/dev/connect') {
        res.writeHead(404, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ code: 'MESH_NOT_FOUND', message: 'No such route.' }))
        return
      }
      const { peerId } = JSON.parse(Buffer.concat(chunks).toString()) as { peerId: string }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(answer(peerId)))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

async function ping(mesh: WorkspaceMesh): Promise<number> {
  const { duplex } = await mesh.openStream(PING_PROTOCOL)
  const pinger = createPinger(duplex)
  try {
    return await pinger.ping()
  } finally {
    pinger.close()
  }
}

describe('openWorkspaceMesh', () => {
  let coordinator: Server
  let api: ApiClient
  let agentKey: PrivateKey
  let agent: MeshNode
  /** Lifetime of the tickets handed out, in ms. */
  let ticketMs = 60_000
  const connects: string[] = []
  let mesh: WorkspaceMesh | undefined

  beforeAll(async () => {
    agentKey = await newPeerKey()
    agent = await startAgent(agentKey)
    coordinator = await startConnectEndpoint((peerId) => {
      connects.push(peerId)
      const exp = Date.now() + ticketMs
      const agentPeerId = agent.peerId.toString()
      const claims = { v: 1 as const, client: peerId, agent: agentPeerId, workspace: 'ws-1' }
      return {
        workspaceId: 'ws-1',
        agent: {
          peerId: agentPeerId,
          addrs: agent.getMultiaddrs().map((a) => a.decapsulate('/p2p').toString()),
        },
        relays: [],
        ticket: signTicket({ ...claims, user: 'alice', exp }, keys.privateKey),
        expiresAt: new Date(exp).toISOString(),
      }
    })
    const port = (coordinator.address() as AddressInfo).port
    api = new ApiClient({ url: `http://127.0.0.1:${port}`, token: 'session-token' })
  })

  afterEach(async () => {
    await mesh?.close()
    mesh = undefined
    connects.length = 0
    ticketMs = 60_000
  })

  afterAll(async () => {
    await agent?.stop()
    coordinator?.close()
  })

  const open = async (): Promise<WorkspaceMesh> =>
    (mesh = await openWorkspaceMesh(api, 'dev', { notice: () => undefined }))

  it('should carry a burst of streams right after dialing on one connection', async () => {
    // More than the agent muxer's 10 "early" streams at once: opened blindly,
    // they would make it abort the whole connection.
    const m = await open()
    const streams = await Promise.all(Array.from({ length: 20 }, () => m.openStream(PING_PROTOCOL)))
    expect(new Set(streams.map((s) => s.connection.id)).size).toBe(1)
    expect(streams[0]!.path).toBe('direct (tcp)')
    expect(m.path()).toBe('direct (tcp)')
    expect(m.node.getConnections(agent.peerId)).toHaveLength(1)
    for (const s of streams) s.duplex.destroy()
  })

  it('should renew the ticket before it expires, for the same peer id', async () => {
    ticketMs = 2500
    const m = await open()
    expect(await ping(m)).toBeGreaterThan(0)

    // Past the first ticket's expiry: the agent refuses it, so a stream
    // opening now works only with a renewed ticket.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    expect(connects.length).toBeGreaterThanOrEqual(2)
    expect(new Set(connects)).toEqual(new Set([m.peerId]))
    expect(await ping(m)).toBeGreaterThan(0)
  })

  it('should dial again when the connection died', async () => {
    const m = await open()
    const first = m.connection
    await first.close()
    expect(await ping(m)).toBeGreaterThan(0)
    expect(m.connection.id).not.toBe(first.id)
    expect(m.node.getConnections(agent.peerId)).toHaveLength(1)
  })

  it('should find the agent again after it restarts on another port', async () => {
    const m = await open()
    expect(await ping(m)).toBeGreaterThan(0)
    const before = connects.length

    await agent.stop()
    agent = await startAgent(agentKey)
    expect(await ping(m)).toBeGreaterThan(0)
    // The known address failed; the coordinator named the new one.
    expect(connects.length).toBeGreaterThan(before)
  })
})
