/**
 * The private DHT: the coordinator's relay node is its server, and a client
 * that knows only an agent's peer id finds the agent's current addresses
 * through it, bootstrapped by its connection to the coordinator.
 */
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DHT_PROTOCOL, findPeerAddrs } from '../netstack/dht.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { createLogger } from '../sdk/logger.ts'
import { createRelayPolicy, relayAddrs, startRelayNode, type RelayPolicy } from './relay.ts'

const log = createLogger('mesh:test', 'silent')

describe('private DHT on the coordinator', () => {
  let relay: MeshNode
  let policy: RelayPolicy
  let agent: MeshNode
  let client: MeshNode

  beforeAll(async () => {
    policy = createRelayPolicy()
    relay = await startRelayNode({
      peerKey: await newPeerKey(),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      policy,
      log,
    })
    const agentKey = await newPeerKey()
    policy.registerAgent('dht-test', peerIdFromPrivateKey(agentKey).toString())
    agent = await createMeshNode({
      privateKey: agentKey,
      listen: ['/ip4/127.0.0.1/tcp/0', `${relayAddrs(relay)[0]!}/p2p-circuit`],
      webrtc: false,
    })
    client = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: [],
      dht: 'client',
      webrtc: false,
    })
  }, 30_000)

  afterAll(async () => {
    await Promise.all([client?.stop(), agent?.stop(), relay?.stop()])
  })

  it('should speak only its own DHT protocol', async () => {
    expect(relay.getProtocols()).toContain(DHT_PROTOCOL)
    expect(relay.getProtocols().filter((p) => p.includes('/ipfs/kad/'))).toEqual([])
    // Neither a client nor an agent serves it.
    expect(client.getProtocols()).not.toContain(DHT_PROTOCOL)
    expect(agent.getProtocols()).not.toContain(DHT_PROTOCOL)
  })

  it('should find an agent by peer id through the coordinator', async () => {
    const agentId = agent.peerId.toString()
    const agentTcp = agent
      .getMultiaddrs()
      .map((ma) => ma.toString())
      .find((a) => a.startsWith('/ip4/127.0.0.1/tcp/') && !a.includes('/p2p-circuit'))
    expect(agentTcp).toBeDefined()
    // The client knows nothing of the agent; its one peer is the coordinator.
    await expect(client.peerStore.has(agent.peerId)).resolves.toBe(false)
    // As /connect does when it issues a ticket.
    policy.grant(client.peerId.toString(), agentId, Date.now() + 60_000)
    await client.dial(multiaddr(relayAddrs(relay)[0]!))

    const addrs = await findPeerAddrs(client, agentId, { signal: AbortSignal.timeout(10_000) })
    expect(addrs).toContain(agentTcp!.replace(`/p2p/${agentId}`, ''))

    // And the address found works.
    const connection = await client.dial(
      multiaddr(`${agentTcp!.replace(`/p2p/${agentId}`, '')}/p2p/${agentId}`),
    )
    expect(connection.remotePeer.toString()).toBe(agentId)
  })

  it('should answer MESH_CONNECT_FAILED for a peer nobody knows', async () => {
    const unknown = peerIdFromPrivateKey(await newPeerKey()).toString()
    await expect(
      findPeerAddrs(client, unknown, { signal: AbortSignal.timeout(10_000) }),
    ).rejects.toMatchObject({ code: 'MESH_CONNECT_FAILED' })
  })

  it('should tell a peer with no grant nothing', async () => {
    const stranger = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: [],
      dht: 'client',
      webrtc: false,
    })
    try {
      await stranger.dial(multiaddr(relayAddrs(relay)[0]!))
      await expect(
        findPeerAddrs(stranger, agent.peerId.toString(), { signal: AbortSignal.timeout(5000) }),
      ).rejects.toMatchObject({ code: 'MESH_CONNECT_FAILED' })
    } finally {
      await stranger.stop()
    }
  })
})
