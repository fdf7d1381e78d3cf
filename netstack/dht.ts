/**
 * The mesh's private Kademlia DHT: its own protocol (DHT_PROTOCOL), so it
 * never joins the public IPFS one. The coordinator's relay node is the DHT
 * server; any peer connected to it (the bootstrap is simply that
 * connection) can look an agent's current addresses up by peer id: the
 * coordinator answers from what agents told it by identify (pushed again
 * when their addresses change). Private addresses are kept: LANs and VPNs
 * are where direct paths live.
 *
 * Loaded only by nodes that ask for it (node.ts `dht`), so the CLI's cold
 * start and the agent do not pay for it. The CLI does not use it: the
 * coordinator's connect answer carries the same addresses along with the
 * ticket. It is for peers that know an agent's id but need its addresses
 * without the HTTP API (for instance a browser holding a ticket).
 */
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { MeshError } from '../sdk/errors.ts'
import type { MeshNode } from './node.ts'

export const DHT_PROTOCOL = '/coder-mesh/kad/1.0.0'

export type DhtMode = 'server' | 'client'

/** The kad-dht service for createLibp2p. */
export async function dhtService(mode: DhtMode): Promise<unknown> {
  const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
  return kadDHT({
    protocol: DHT_PROTOCOL,
    clientMode: mode === 'client',
    peerInfoMapper: passthroughMapper,
    logPrefix: 'coder-mesh:dht',
    datastorePrefix: '/coder-mesh-dht',
    metricsPrefix: 'coder_mesh_dht',
  })
}

/**
 * The addresses the DHT knows for `peerId` (without /p2p/<peer>), asked of
 * the network (the coordinator), not from this node's own peer store.
 * Throws MESH_CONNECT_FAILED when no DHT peer knows it.
 */
export async function findPeerAddrs(
  node: MeshNode,
  peerId: string | PeerId,
  options: { signal?: AbortSignal } = {},
): Promise<string[]> {
  if (node.services.dht === undefined) throw new TypeError('this node runs no DHT')
  const id = typeof peerId === 'string' ? peerIdFromString(peerId) : peerId
  try {
    const info = await node.peerRouting.findPeer(id, { signal: options.signal, useCache: false })
    const self = `/p2p/${id.toString()}`
    return info.multiaddrs.map((ma) => {
      const text = ma.toString()
      return text.endsWith(self) ? text.slice(0, -self.length) : text
    })
  } catch (err) {
    throw new MeshError(
      'MESH_CONNECT_FAILED',
      `No DHT peer knows the addresses of ${id.toString()}.`,
      {
        detail: err instanceof Error ? err.message : String(err),
        cause: err,
      },
    )
  }
}
