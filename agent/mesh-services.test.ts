/**
 * The agent's forward, ping and speed test protocols on real libp2p nodes
 * (an agent, a client and a circuit relay on loopback), driven through the
 * wire helpers the CLI uses.
 */
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Server } from 'node:net'
import type { Duplex } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PING_PROTOCOL, SPEEDTEST_PROTOCOL, TCP_PROTOCOL } from '../netstack/constants.ts'
import { describePath, dialAgent, openMeshStream } from '../netstack/dial.ts'
import { encodeForwardRequest, readForwardStatus } from '../netstack/forward.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { createPinger } from '../netstack/ping.ts'
import { countUntilEnd, speedtestStream } from '../netstack/speedtest.ts'
import { newTicketKeyPair, signTicket, type TicketKeyPair } from '../netstack/ticket.ts'
import { createLogger } from '../sdk/logger.ts'
import { serveMeshServices } from './mesh-services.ts'

const log = createLogger('mesh:test', 'silent')

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** A TCP server that echoes each connection and ends its side after the client's FIN. */
async function startEchoServer(): Promise<Server> {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => undefined)
    socket.pipe(socket)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

function portOf(server: Server): number {
  return (server.address() as AddressInfo).port
}

/** A port nothing listens on: bound once, then released. */
async function closedPort(): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = portOf(server)
  await new Promise((resolve) => server.close(resolve))
  return port
}

describe('agent mesh services', () => {
  let keys: TicketKeyPair
  let relay: MeshNode
  let agent: MeshNode
  let client: MeshNode
  let echo: Server
  let directAddrs: string[]
  let relayAddr: string

  beforeAll(async () => {
    keys = newTicketKeyPair()
    relay = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      relayServer: { maxReservations: 10 },
    })
    relayAddr = relay.getMultiaddrs()[0]!.toString()
    agent = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: ['/ip4/127.0.0.1/tcp/0', `${relayAddr}/p2p-circuit`],
    })
    client = await createMeshNode({ privateKey: await newPeerKey(), listen: [] })
    await serveMeshServices(
      agent,
      { agentPeerId: agent.peerId.toString(), publicKey: () => keys.publicKey },
      log,
    )
    directAddrs = agent
      .getMultiaddrs()
      .filter((a) => !a.toString().includes('p2p-circuit'))
      .map((a) => a.decapsulate('/p2p').toString())
    echo = await startEchoServer()
  })

  afterAll(async () => {
    echo?.close()
    await Promise.all([client?.stop(), agent?.stop(), relay?.stop()])
  })

  function ticket(node: MeshNode): string {
    const claims = {
      v: 1 as const,
      client: node.peerId.toString(),
      agent: agent.peerId.toString(),
      workspace: 'w',
      user: 'u',
      exp: Date.now() + 60_000,
    }
    return signTicket(claims, keys.privateKey)
  }

  async function directStream(protocol: string): Promise<Duplex> {
    const target = { peerId: agent.peerId.toString(), addrs: directAddrs, relays: [] }
    const connection = await dialAgent(client, target)
    return openMeshStream(connection, protocol, ticket(client))
  }

  async function forwardTo(port: number): Promise<{ duplex: Duplex; connected: boolean }> {
    const duplex = await directStream(TCP_PROTOCOL)
    duplex.write(encodeForwardRequest(port))
    return { duplex, connected: await readForwardStatus(duplex) }
  }

  it('should forward bytes to a loopback port and keep the reply after our FIN', async () => {
    const { duplex, connected } = await forwardTo(portOf(echo))
    expect(connected).toBe(true)
    const payload = randomBytes(3 * 1024 * 1024 + 17)
    const chunks: Buffer[] = []
    duplex.on('data', (c: Buffer) => chunks.push(c))
    duplex.end(payload)
    await once(duplex, 'end')
    expect(sha256(Buffer.concat(chunks))).toBe(sha256(payload))
  })

  it('should answer FAILED at once for a refused port, then forward a good one', async () => {
    const refused = await forwardTo(await closedPort())
    expect(refused.connected).toBe(false)
    refused.duplex.end()
    refused.duplex.resume()

    const good = await forwardTo(portOf(echo))
    expect(good.connected).toBe(true)
    good.duplex.end('after a refusal')
    expect((await good.duplex.toArray()).join('')).toBe('after a refusal')
  })

  it('should carry 100 parallel forwards on one connection', async () => {
    const runs = Array.from({ length: 100 }, async () => {
      const { duplex, connected } = await forwardTo(portOf(echo))
      expect(connected).toBe(true)
      const payload = randomBytes(64 * 1024)
      const reply = countAndHash(duplex)
      duplex.end(payload)
      expect(await reply).toBe(sha256(payload))
    })
    await Promise.all(runs)
    const open = client.getConnections(agent.peerId)
    expect(open).toHaveLength(1)
  })

  it('should time pings on a direct connection and name its path', async () => {
    const target = { peerId: agent.peerId.toString(), addrs: directAddrs, relays: [] }
    const connection = await dialAgent(client, target)
    expect(describePath(connection)).toBe('direct (tcp)')
    const pinger = createPinger(await openMeshStream(connection, PING_PROTOCOL, ticket(client)))
    for (let i = 0; i < 3; i++) expect(await pinger.ping()).toBeGreaterThan(0)
    pinger.close()
  })

  it('should report a relayed path when only the relay is known', async () => {
    const other = await createMeshNode({ privateKey: await newPeerKey(), listen: [] })
    try {
      const target = { peerId: agent.peerId.toString(), addrs: [], relays: [relayAddr] }
      const connection = await dialAgent(other, target)
      expect(describePath(connection)).toBe(`relayed via ${relayAddr}`)
      const pinger = createPinger(await openMeshStream(connection, PING_PROTOCOL, ticket(other)))
      expect(await pinger.ping()).toBeGreaterThan(0)
      pinger.close()
    } finally {
      await other.stop()
    }
  })

  it('should measure a speed test both ways', async () => {
    for (const direction of ['upload', 'download'] as const) {
      const duplex = await directStream(SPEEDTEST_PROTOCOL)
      const result = await speedtestStream(duplex, { direction, durationMs: 300 })
      expect(result.direction).toBe(direction)
      expect(result.bytes).toBeGreaterThan(0)
      expect(result.ms).toBeGreaterThan(0)
    }
  })

  it('should refuse every service without a valid ticket', async () => {
    const target = { peerId: agent.peerId.toString(), addrs: directAddrs, relays: [] }
    const connection = await dialAgent(client, target)
    for (const protocol of [TCP_PROTOCOL, PING_PROTOCOL, SPEEDTEST_PROTOCOL]) {
      const duplex = await openMeshStream(connection, protocol, 'not-a-ticket')
      duplex.write(encodeForwardRequest(portOf(echo)))
      await expect(countUntilEnd(duplex)).rejects.toThrow()
    }
  })
})

function countAndHash(duplex: Duplex): Promise<string> {
  const hash = createHash('sha256')
  duplex.on('data', (c: Buffer) => hash.update(c))
  return new Promise((resolve, reject) => {
    duplex.once('end', () => resolve(hash.digest('hex')))
    duplex.once('error', reject)
  })
}
