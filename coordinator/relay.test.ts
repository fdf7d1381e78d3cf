import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { importTicketPublicKey, verifyTicket } from '../netstack/ticket.ts'
import { AGENT_CONNECTED_WINDOW } from './constants.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { createLogger } from '../sdk/logger.ts'
import {
  createRelayGater,
  createRelayPolicy,
  relayUsage,
  startRelayNode,
  type RelayPolicy,
} from './relay.ts'
import {
  openProbe,
  testCoordinator,
  waitForBuild,
  type Probe,
  type TestCoordinator,
} from './testing.ts'

async function randomPeer(): Promise<PeerId> {
  return peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
}

describe('relay gater', () => {
  it('should deny a reservation to a peer that is not a registered agent', async () => {
    const policy = createRelayPolicy()
    const gater = createRelayGater(policy)
    const agent = await randomPeer()
    const stranger = await randomPeer()

    expect(await gater.denyInboundRelayReservation!(stranger)).toBe(true)
    expect(await gater.denyInboundRelayReservation!(agent)).toBe(true)
    policy.registerAgent('ws-1', agent.toString())
    expect(await gater.denyInboundRelayReservation!(agent)).toBe(false)
    expect(await gater.denyInboundRelayReservation!(stranger)).toBe(true)

    policy.forgetAgent('ws-1')
    expect(await gater.denyInboundRelayReservation!(agent)).toBe(true)
  })

  it('should keep an agent peer registered while any workspace still names it', async () => {
    const policy = createRelayPolicy()
    policy.registerAgent('ws-1', 'peer-a')
    policy.registerAgent('ws-2', 'peer-a')
    policy.forgetAgent('ws-1')
    expect(policy.isAgent('peer-a')).toBe(true)
    policy.registerAgent('ws-2', 'peer-b')
    expect(policy.isAgent('peer-a')).toBe(false)
    expect(policy.isAgent('peer-b')).toBe(true)
  })

  it('should deny a circuit unless the source holds an unexpired grant for the destination', async () => {
    let now = 1_000_000
    const policy = createRelayPolicy({ now: () => now })
    const gater = createRelayGater(policy)
    const [client, agent, other] = await Promise.all([randomPeer(), randomPeer(), randomPeer()])

    expect(await gater.denyOutboundRelayedConnection!(client, agent)).toBe(true)
    policy.grant(client.toString(), agent.toString(), now + 1000)
    expect(await gater.denyOutboundRelayedConnection!(client, agent)).toBe(false)
    expect(await gater.denyOutboundRelayedConnection!(client, other)).toBe(true)
    expect(await gater.denyOutboundRelayedConnection!(agent, client)).toBe(true)

    now += 1000
    expect(await gater.denyOutboundRelayedConnection!(client, agent)).toBe(true)
    policy.sweep()
    expect(policy.isGranted(client.toString(), agent.toString())).toBe(false)
  })
})

describe('agents and tickets', () => {
  let t: TestCoordinator
  // Builds run the real terraform on the probe template, which hands over
  // the agent token each build received.
  let probe: Probe
  let token: string
  let agentToken: string
  let agentPeer: string

  beforeAll(async () => {
    probe = await openProbe()
    t = await testCoordinator()
    token = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: probe.template })
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    await waitForBuild(t, token, res.json.build.id)
    agentToken = await probe.agentToken('dev')
    agentPeer = (await randomPeer()).toString()
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
    await probe.cleanup()
  })

  function register(bearer: string, peerId = agentPeer) {
    return t.call('POST', '/api/v1/agent/register', {
      token: bearer,
      body: { peerId, addrs: ['/ip4/127.0.0.1/tcp/4001'], version: '0.1.0' },
    })
  }

  it('should refuse /connect with 409 MESH_AGENT_NOT_CONNECTED before the agent registers', async () => {
    const res = await t.call('POST', '/api/v1/workspaces/dev/connect', {
      token,
      body: { peerId: (await randomPeer()).toString() },
    })
    expect(res.status).toBe(409)
    expect(res.json.code).toBe('MESH_AGENT_NOT_CONNECTED')
  })

  it('should refuse registration with a session token or an unknown agent token', async () => {
    expect((await register(token)).status).toBe(401)
    const unknown = await register('cma_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA')
    expect(unknown.status).toBe(401)
    expect(unknown.json.code).toBe('MESH_UNAUTHENTICATED')
    expect((await t.call('POST', '/api/v1/agent/register', { body: {} })).status).toBe(401)
  })

  it('should register the agent and answer the ticket key and relays', async () => {
    const res = await register(agentToken)
    expect(res.status).toBe(200)
    expect(res.json).toMatchObject({
      workspaceName: 'dev',
      owner: 'alice',
      heartbeatSeconds: 15,
    })
    const relayId = t.coordinator.node.peerId.toString()
    expect(res.json.relays.length).toBeGreaterThan(0)
    for (const addr of res.json.relays) {
      expect(addr).toMatch(new RegExp(`/p2p/${relayId}$`))
      expect(addr).not.toContain('0.0.0.0')
    }
    expect(t.coordinator.relay.isAgent(agentPeer)).toBe(true)

    const ws = await t.call('GET', '/api/v1/workspaces/dev', { token })
    expect(ws.json.agent).toMatchObject({ peerId: agentPeer, connected: true, version: '0.1.0' })
  })

  it('should refuse an agent peer id that does not parse with 400', async () => {
    const res = await register(agentToken, 'not-a-peer-id')
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_VALIDATION')
  })

  it('should sign a ticket that verifies with the key the agent got, and grant the circuit', async () => {
    const client = (await randomPeer()).toString()
    const reg = await register(agentToken)
    const res = await t.call('POST', '/api/v1/workspaces/dev/connect', {
      token,
      body: { peerId: client },
    })
    expect(res.status).toBe(200)
    expect(res.json.agent).toEqual({ peerId: agentPeer, addrs: ['/ip4/127.0.0.1/tcp/4001'] })
    expect(res.json.relays).toEqual(reg.json.relays)

    const key = importTicketPublicKey(reg.json.ticketPublicKey)
    const claims = verifyTicket(res.json.ticket, key, { agent: agentPeer, client })
    expect(claims).toMatchObject({ v: 1, workspace: res.json.workspaceId })
    expect(claims.exp).toBe(Date.parse(res.json.expiresAt))
    expect(claims.exp - Date.now()).toBeGreaterThan(59 * 60_000)
    expect(() =>
      verifyTicket(res.json.ticket, key, { agent: agentPeer, client: agentPeer }),
    ).toThrow()

    expect(t.coordinator.relay.isGranted(client, agentPeer)).toBe(true)
  })

  it('should refuse a client peer id that does not parse with 400', async () => {
    const res = await t.call('POST', '/api/v1/workspaces/dev/connect', {
      token,
      body: { peerId: 'garbage' },
    })
    expect(res.status).toBe(400)
  })

  it('should retire the agent when the workspace stops, and refuse /connect while stopped', async () => {
    const stop = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'stop' },
    })
    await waitForBuild(t, token, stop.json.id)
    expect(t.coordinator.relay.isAgent(agentPeer)).toBe(false)
    expect((await register(agentToken)).status).toBe(401)

    const res = await t.call('POST', '/api/v1/workspaces/dev/connect', {
      token,
      body: { peerId: (await randomPeer()).toString() },
    })
    expect(res.status).toBe(409)
    expect(res.json.code).toBe('MESH_WORKSPACE_NOT_RUNNING')
  })

  it('should issue a new agent token on start; the old one stops working', async () => {
    const start = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'start' },
    })
    await waitForBuild(t, token, start.json.id)
    const fresh = await probe.agentToken('dev')
    expect(fresh).not.toBe(agentToken)
    expect((await register(agentToken)).status).toBe(401)
    expect((await register(fresh)).status).toBe(200)
  })
})

describe('tickets for an agent that went silent', () => {
  it('should refuse /connect with 409 MESH_AGENT_NOT_CONNECTED, saying when it was last seen', async () => {
    let ms = Date.parse('2030-01-01T12:00:00.000Z')
    const probe = await openProbe()
    const t = await testCoordinator({ now: () => ms })
    try {
      const token = await t.owner()
      await t.call('POST', '/api/v1/templates/local/versions', { token, body: probe.template })
      const created = await t.call('POST', '/api/v1/workspaces', {
        token,
        body: { name: 'dev', template: 'local' },
      })
      await waitForBuild(t, token, created.json.build.id)
      const agentToken = await probe.agentToken('dev')
      const registered = await t.call('POST', '/api/v1/agent/register', {
        token: agentToken,
        body: { peerId: (await randomPeer()).toString(), addrs: [], version: '0.1.0' },
      })
      expect(registered.status).toBe(200)
      const connect = async () =>
        t.call('POST', '/api/v1/workspaces/dev/connect', {
          token,
          body: { peerId: (await randomPeer()).toString() },
        })

      // Within the window the workspace reports as connected, tickets are issued.
      ms += AGENT_CONNECTED_WINDOW - 1
      expect((await connect()).status).toBe(200)

      ms += 1
      const ws = await t.call('GET', '/api/v1/workspaces/dev', { token })
      expect(ws.json.agent.connected).toBe(false)
      const refused = await connect()
      expect(refused.status).toBe(409)
      expect(refused.json).toMatchObject({
        code: 'MESH_AGENT_NOT_CONNECTED',
        message:
          'The agent of workspace "dev" is not connected: it was last seen 45 seconds ago, ' +
          "at 2030-01-01T12:00:00.000Z. It may have stopped or lost its network; restart the workspace with 'coder-mesh restart dev'.",
      })

      ms += 3 * 3_600_000
      expect((await connect()).json.message).toContain('last seen 3 hours ago')
    } finally {
      await t.cleanup()
      await probe.cleanup()
    }
  })
})

describe('relay reservations', () => {
  // A relay on loopback and one agent key it accepts; every node a test
  // starts is stopped after it.
  let policy: RelayPolicy
  let relay: MeshNode
  let agentKey: PrivateKey
  let nodes: MeshNode[]

  beforeEach(async () => {
    policy = createRelayPolicy()
    relay = await startRelayNode({
      peerKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      policy,
      log: createLogger('relay-test', 'silent'),
    })
    agentKey = await generateKeyPair('Ed25519')
    policy.registerAgent('ws-1', peerIdFromPrivateKey(agentKey).toString())
    nodes = [relay]
  })

  afterEach(async () => {
    await Promise.all(nodes.map((node) => node.stop()))
  })

  /** A node with the agent's key, holding a reservation on the relay. */
  async function agent(): Promise<MeshNode> {
    const node = await createMeshNode({
      privateKey: agentKey,
      listen: [`${relay.getMultiaddrs()[0]!.toString()}/p2p-circuit`],
      webrtc: false,
    })
    nodes.push(node)
    return node
  }

  it('should relay through the newest connection of a peer that reconnected', async () => {
    // Two nodes with one key stand for one agent: the first connection stops
    // answering (as one a NAT dropped silently), the agent connects again and
    // reserves, and the relay still holds the first, until a ping fails on it.
    const lost = await agent()
    await lost.unhandle('/libp2p/circuit/relay/0.2.0/stop')
    await agent()
    expect(relay.getConnections(peerIdFromPrivateKey(agentKey))).toHaveLength(2)

    const client = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      webrtc: false,
    })
    nodes.push(client)
    const agentPeer = peerIdFromPrivateKey(agentKey).toString()
    policy.grant(client.peerId.toString(), agentPeer, Date.now() + 60_000)
    const relayAddr = relay.getMultiaddrs()[0]!.toString()
    const circuit = multiaddr(`${relayAddr}/p2p-circuit/p2p/${agentPeer}`)
    const connection = await client.dial(circuit, { signal: AbortSignal.timeout(10_000) })
    expect(connection.remoteAddr.toString()).toContain('/p2p-circuit')
  })

  it("should drop an agent's reservation when its connection goes, not hours later", async () => {
    const node = await agent()
    expect(relayUsage(relay).reservations).toBe(1)

    await node.stop()
    await vi.waitFor(() => expect(relayUsage(relay).reservations).toBe(0), { timeout: 5000 })
  })
})
