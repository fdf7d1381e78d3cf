import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createHash, randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../sdk/logger.ts'
import { SSH_PROTOCOL } from './constants.ts'
import { dialAgent, describePath, openMeshStream } from './dial.ts'
import { createMeshNode, type MeshNode } from './node.ts'
import { serveMeshProtocol } from './serve.ts'
import { toDuplex } from './stream-duplex.ts'
import { newTicketKeyPair, signTicket, type TicketKeyPair } from './ticket.ts'

const log = createLogger('mesh:test', 'silent')

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

describe('mesh streams', () => {
  let relay: MeshNode
  let agent: MeshNode
  let client: MeshNode
  let keys: TicketKeyPair

  beforeAll(async () => {
    keys = newTicketKeyPair()
    relay = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      relayServer: { maxReservations: 10 },
    })
    const relayAddr = relay.getMultiaddrs()[0]!.toString()
    agent = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0', `${relayAddr}/p2p-circuit`],
    })
    client = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [] })

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
    await Promise.all([client?.stop(), agent?.stop(), relay?.stop()])
  })

  function ticketFor(clientPeer: string, agentPeer: string): string {
    const claims = {
      v: 1 as const,
      client: clientPeer,
      agent: agentPeer,
      workspace: 'w',
      user: 'u',
    }
    return signTicket({ ...claims, exp: Date.now() + 60_000 }, keys.privateKey)
  }

  it('should echo bytes intact over a ticketed direct stream', async () => {
    const addrs = agent
      .getMultiaddrs()
      .filter((a) => !a.toString().includes('p2p-circuit'))
      .map((a) => a.decapsulate('/p2p').toString())
    const conn = await dialAgent(client, { peerId: agent.peerId.toString(), addrs, relays: [] })
    expect(describePath(conn)).toBe('direct (tcp)')

    const ticket = ticketFor(client.peerId.toString(), agent.peerId.toString())
    const duplex = await openMeshStream(conn, SSH_PROTOCOL, ticket)
    const payload = randomBytes(4 * 1024 * 1024)
    duplex.end(payload)
    const echoed = await readAll(duplex)
    const sum = (b: Buffer) => createHash('sha256').update(b).digest('hex')
    expect(sum(echoed)).toBe(sum(payload))
  })

  it('should refuse a stream whose ticket names another agent', async () => {
    const stranger = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
    })
    try {
      const addrs = agent.getMultiaddrs().map((a) => a.decapsulate('/p2p').toString())
      const conn = await dialAgent(stranger, {
        peerId: agent.peerId.toString(),
        addrs: addrs.filter((a) => !a.includes('circuit')),
        relays: [],
      })
      const ticket = ticketFor(stranger.peerId.toString(), 'someone-else')
      const duplex = await openMeshStream(conn, SSH_PROTOCOL, ticket)
      duplex.end(Buffer.from('hello'))
      await expect(readAll(duplex)).rejects.toThrow()
    } finally {
      await stranger.stop()
    }
  })

  it('should refuse a raw stream with no ticket', async () => {
    const stranger = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
    })
    try {
      const addr = agent.getMultiaddrs().find((a) => !a.toString().includes('circuit'))!
      const conn = await stranger.dial(multiaddr(addr.toString()))
      const stream = await conn.newStream(SSH_PROTOCOL)
      const duplex = toDuplex(stream)
      duplex.end(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))
      await expect(readAll(duplex)).rejects.toThrow()
    } finally {
      await stranger.stop()
    }
  })

  it('should reach the agent through the relay when it has no direct address', async () => {
    const relayAddr = relay.getMultiaddrs()[0]!.toString()
    const other = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [] })
    try {
      const conn = await dialAgent(other, {
        peerId: agent.peerId.toString(),
        addrs: [],
        relays: [relayAddr],
      })
      expect(describePath(conn)).toMatch(/^relayed via /)
      const ticket = ticketFor(other.peerId.toString(), agent.peerId.toString())
      const duplex = await openMeshStream(conn, SSH_PROTOCOL, ticket)
      duplex.end(Buffer.from('through the relay'))
      expect((await readAll(duplex)).toString()).toBe('through the relay')
    } finally {
      await other.stop()
    }
  })
})
