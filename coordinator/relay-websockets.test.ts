/**
 * The coordinator's relay on WebSockets, the browser's way to it: a peer
 * that speaks only WebSockets to the relay reaches an agent (which holds its
 * reservation over TCP) through a circuit, with the same gating as TCP.
 */
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { createHash, randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dialAgent, describePath } from '../netstack/dial.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { toDuplex } from '../netstack/stream-duplex.ts'
import { createLogger } from '../sdk/logger.ts'
import {
  createRelayPolicy,
  relayAddrs,
  relayWebSocketAddrs,
  startRelayNode,
  type RelayPolicy,
} from './relay.ts'

const ECHO = '/coder-mesh-test/echo/1.0.0'
const log = createLogger('mesh:test', 'silent')

describe('relay over WebSockets', () => {
  let relay: MeshNode
  let policy: RelayPolicy
  let agent: MeshNode
  let browser: MeshNode

  beforeAll(async () => {
    policy = createRelayPolicy()
    relay = await startRelayNode({
      peerKey: await newPeerKey(),
      listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
      policy,
      log,
    })
    const agentKey = await newPeerKey()
    policy.registerAgent('ws-test', peerIdFromPrivateKey(agentKey).toString())
    // The agent reserves over TCP, as agents do.
    agent = await createMeshNode({
      privateKey: agentKey,
      listen: [`${relayAddrs(relay)[0]!}/p2p-circuit`],
      webrtc: false,
    })
    await agent.handle(
      ECHO,
      (stream) => {
        const duplex = toDuplex(stream)
        duplex.pipe(duplex)
      },
      { runOnLimitedConnection: true },
    )
    browser = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: [],
      websockets: true,
      webrtc: false,
    })
  }, 30_000)

  afterAll(async () => {
    await Promise.all([browser?.stop(), agent?.stop(), relay?.stop()])
  })

  it('should list the WebSockets address apart from the TCP ones', () => {
    const ws = relayWebSocketAddrs(relay)
    expect(ws).toEqual([expect.stringMatching(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/ws\/p2p\//)])
    expect(relayAddrs(relay)).toEqual([
      expect.stringMatching(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//),
    ])
  })

  it('should carry a circuit from a WebSockets peer to an agent', async () => {
    const ws = relayWebSocketAddrs(relay)[0]!
    policy.grant(browser.peerId.toString(), agent.peerId.toString(), Date.now() + 60_000)
    const connection = await dialAgent(
      browser,
      { peerId: agent.peerId.toString(), addrs: [], relays: [ws] },
      { upgrade: false, timeout: 10_000 },
    )
    expect(connection.remoteAddr.toString()).toContain('/ws/')
    expect(describePath(connection)).toMatch(/^relayed via \/ip4\/127\.0\.0\.1\/tcp\/\d+\/ws\//)

    const duplex = toDuplex(await connection.newStream(ECHO, { runOnLimitedConnection: true }))
    const payload = randomBytes(1024 * 1024)
    duplex.end(payload)
    const chunks: Buffer[] = []
    for await (const chunk of duplex) chunks.push(chunk as Buffer)
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
    expect(sha(Buffer.concat(chunks))).toBe(sha(payload))
  })

  it('should refuse a circuit over WebSockets to a peer with no grant', async () => {
    const stranger = await createMeshNode({
      privateKey: await newPeerKey(),
      listen: [],
      websockets: true,
      webrtc: false,
    })
    try {
      const ws = relayWebSocketAddrs(relay)[0]!
      await expect(
        dialAgent(
          stranger,
          { peerId: agent.peerId.toString(), addrs: [], relays: [ws] },
          { upgrade: false, timeout: 5000 },
        ),
      ).rejects.toThrow(/Could not reach the workspace agent/)
    } finally {
      await stranger.stop()
    }
  })
})
