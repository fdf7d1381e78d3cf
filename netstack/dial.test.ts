import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection } from '@libp2p/interface'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { networkInterfaces } from 'node:os'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../sdk/logger.ts'
import { SSH_PROTOCOL } from './constants.ts'
import { bestConnection, describePath, dialAgent, openMeshStream } from './dial.ts'
import { createMeshNode, type MeshNode, type MeshNodeInit } from './node.ts'
import { serveMeshProtocol } from './serve.ts'
import { newTicketKeyPair, signTicket, type TicketKeyPair } from './ticket.ts'

const log = createLogger('mesh:test', 'silent')

// ICE gathers no loopback candidates: WebRTC between two local nodes needs
// some other local IPv4 address (packets to it stay on the host).
const hasLocalIpv4 = Object.values(networkInterfaces()).some((list) =>
  (list ?? []).some((i) => i.family === 'IPv4' && !i.internal),
)

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString()
}

async function waitUntil(what: string, check: () => boolean, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** A TCP server on loopback that forwards to `target` only after `delayMs` (or never). */
async function slowProxy(target: number, delayMs: number | 'never'): Promise<Server> {
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined)
    socket.pause()
    if (delayMs === 'never') return
    setTimeout(() => {
      const upstream = connect(target, '127.0.0.1')
      upstream.on('error', () => socket.destroy())
      socket.on('error', () => upstream.destroy())
      socket.pipe(upstream).pipe(socket)
      socket.resume()
    }, delayMs)
  })
  server.on('close', () => sockets.forEach((s) => s.destroy()))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  return server
}

function port(server: Server): number {
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('not listening')
  return address.port
}

describe('dialing an agent on several paths', () => {
  let keys: TicketKeyPair
  let relay: MeshNode
  let agent: MeshNode
  let relayAddr: string
  let agentPort: number
  const nodes: MeshNode[] = []
  const servers: Server[] = []

  async function client(init: Partial<MeshNodeInit> = {}): Promise<MeshNode> {
    const node = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      webrtc: false,
      ...init,
    })
    nodes.push(node)
    return node
  }

  async function echo(node: MeshNode, connection = bestConnection(node, agent.peerId.toString())) {
    const ticket = signTicket(
      {
        v: 1,
        client: node.peerId.toString(),
        agent: agent.peerId.toString(),
        workspace: 'w',
        user: 'u',
        exp: Date.now() + 60_000,
      },
      keys.privateKey,
    )
    const duplex = await openMeshStream(connection!, SSH_PROTOCOL, ticket)
    duplex.end('ping')
    return readAll(duplex)
  }

  const connectionsTo = (node: MeshNode): string[] =>
    node
      .getConnections()
      .filter((c) => c.remotePeer.equals(agent.peerId) && c.status === 'open')
      .map((c) => describePath(c).split(' ')[0]!)
      .sort()

  beforeAll(async () => {
    keys = newTicketKeyPair()
    relay = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      relayServer: { maxReservations: 10 },
      webrtc: false,
    })
    relayAddr = relay.getMultiaddrs()[0]!.toString()
    agent = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0', `${relayAddr}/p2p-circuit`],
      webrtc: { iceServers: [] },
    })
    agentPort = Number(
      agent
        .getMultiaddrs()
        .map((a) => a.toString())
        .find((a) => !a.includes('p2p-circuit'))!
        .split('/')[4],
    )
    await serveMeshProtocol(
      agent,
      SSH_PROTOCOL,
      { agentPeerId: agent.peerId.toString(), publicKey: () => keys.publicKey },
      (duplex) => {
        duplex.pipe(duplex)
      },
      log,
    )
  })

  afterAll(async () => {
    for (const s of servers) s.close()
    await Promise.all(nodes.map((n) => n.stop()))
    await Promise.all([agent?.stop(), relay?.stop()])
  })

  it('should keep the direct connection when the relay also answers', async () => {
    const node = await client()
    const conn = await dialAgent(node, {
      peerId: agent.peerId.toString(),
      addrs: [`/ip4/127.0.0.1/tcp/${agentPort}`],
      relays: [relayAddr],
    })
    expect(describePath(conn)).toBe('direct (tcp)')
    // The relayed connection that came up too is closed: one connection per agent.
    await waitUntil('the spare relayed connection to close', () => connectionsTo(node).length === 1)
    expect(connectionsTo(node)).toEqual(['direct'])
    expect(await echo(node)).toBe('ping')
  })

  it('should use the relay at once when the direct path hangs, and keep it when that path fails', async () => {
    const silent = await slowProxy(agentPort, 'never')
    servers.push(silent)
    const node = await client()
    const conn = await dialAgent(
      node,
      {
        peerId: agent.peerId.toString(),
        addrs: [`/ip4/127.0.0.1/tcp/${port(silent)}`],
        relays: [relayAddr],
      },
      { timeout: 3000, preferDirectMs: 100 },
    )
    expect(describePath(conn)).toMatch(/^relayed via \/ip4\/127\.0\.0\.1\//)
    const ticketed = echo(node, conn)
    // The direct attempt times out; the relayed connection and its stream live on.
    await new Promise((r) => setTimeout(r, 3500))
    expect(conn.status).toBe('open')
    expect(await ticketed).toBe('ping')
    expect(await echo(node, conn)).toBe('ping')
    expect(connectionsTo(node)).toEqual(['relayed'])
  })

  it('should keep a direct connection that comes up after the relayed one, beside it', async () => {
    const slow = await slowProxy(agentPort, 1000)
    servers.push(slow)
    const node = await client()
    const conn = await dialAgent(
      node,
      {
        peerId: agent.peerId.toString(),
        addrs: [`/ip4/127.0.0.1/tcp/${port(slow)}`],
        relays: [relayAddr],
      },
      { preferDirectMs: 0 },
    )
    expect(describePath(conn)).toMatch(/^relayed via /)
    await waitUntil('the late direct connection', () => connectionsTo(node).includes('direct'))
    expect(connectionsTo(node)).toEqual(['direct', 'relayed'])
    expect(describePath(bestConnection(node, agent.peerId.toString())!)).toBe('direct (tcp)')
    expect(await echo(node)).toBe('ping')
    expect(await echo(node, conn)).toBe('ping')
  })

  it.skipIf(!hasLocalIpv4)(
    `should upgrade a relayed connection to WebRTC when both ends have it${
      hasLocalIpv4 ? '' : ' (skipped: no non-loopback IPv4 address for ICE)'
    }`,
    async () => {
      const node = await client({ webrtc: { iceServers: [] } })
      const conn = await dialAgent(node, {
        peerId: agent.peerId.toString(),
        addrs: [],
        relays: [relayAddr],
      })
      expect(describePath(conn)).toMatch(/^relayed via /)
      // Usually at once; an attempt that fails is given up after 10 s and
      // tried again 2 s later.
      await waitUntil(
        'the WebRTC upgrade',
        () => {
          const best = bestConnection(node, agent.peerId.toString())
          return best !== undefined && describePath(best) === 'direct (webrtc)'
        },
        40_000,
      )
      expect(await echo(node)).toBe('ping')
      // The relayed connection stays usable beside it.
      expect(conn.status).toBe('open')
      expect(await echo(node, conn)).toBe('ping')
    },
  )
})

describe('path names', () => {
  it('should name a WebRTC connection signalled through a relay as direct', async () => {
    const { multiaddr } = await import('@multiformats/multiaddr')
    const peer = '12D3KooWEUim3PLepfVE1HiuT5frYNH8eemNDrkWy4oicxHqSraK'
    const relay =
      '/ip4/10.231.1.1/tcp/4001/p2p/12D3KooWHrsX2b8iMCBbboZEsXjp5j3bsB1ycKXsLsBo4HTyjFYz'
    const conn = (addr: string) => ({ remoteAddr: multiaddr(addr) }) as unknown as Connection
    expect(describePath(conn(`${relay}/p2p-circuit/webrtc/p2p/${peer}`))).toBe('direct (webrtc)')
    expect(describePath(conn(`${relay}/p2p-circuit/p2p/${peer}`))).toBe(`relayed via ${relay}`)
    expect(describePath(conn(`/ip4/10.231.2.2/tcp/4100/p2p/${peer}`))).toBe('direct (tcp)')
  })
})
