/**
 * The client side of a mesh connection: dial the agent on every known path
 * at once (its direct addresses and each relay circuit), keep the first
 * connection that comes up, and open ticketed streams on it.
 */
import type { Connection } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Duplex } from 'node:stream'
import { MeshError } from '../sdk/errors.ts'
import { writeTicketFrame } from './frames.ts'
import type { MeshNode } from './node.ts'
import { toDuplex } from './stream-duplex.ts'

/** How long to wait for any path to the agent, in ms. */
export const DEFAULT_DIAL_TIMEOUT = 20_000

export interface AgentTarget {
  peerId: string
  /** The agent's own listen addresses, without /p2p/. */
  addrs: string[]
  /** Relay multiaddrs ending in /p2p/<relay>. */
  relays: string[]
}

/** Every path to the agent: direct addresses first, then relay circuits. */
export function agentPaths(target: AgentTarget): Multiaddr[] {
  const direct = target.addrs
    .filter((a) => !a.includes('/p2p-circuit'))
    .map((a) => multiaddr(`${a}/p2p/${target.peerId}`))
  const relayed = target.relays.map((r) => multiaddr(`${r}/p2p-circuit/p2p/${target.peerId}`))
  return [...direct, ...relayed]
}

interface TransportDialer {
  dial(ma: Multiaddr, options: { signal: AbortSignal }): Promise<Connection>
}

/**
 * Dials all paths in parallel. libp2p's own dial queue tries one address of
 * a peer after another, so a direct address that silently drops packets
 * would hold up the relay for a whole dial timeout; dialing each path
 * through the transport manager races them instead.
 */
export async function dialAgent(
  node: MeshNode,
  target: AgentTarget,
  options: { signal?: AbortSignal; timeout?: number } = {},
): Promise<Connection> {
  const existing = node.getConnections().find((c) => c.remotePeer.toString() === target.peerId)
  if (existing !== undefined && existing.status === 'open') return existing

  const paths = agentPaths(target)
  if (paths.length === 0) {
    throw new MeshError('MESH_CONNECT_FAILED', 'The agent has no known address and no relay.')
  }

  // One controller per path, aborted only while its dial is pending: a
  // connection keeps its dial signal, so aborting it after the dial won
  // (or letting a timeout signal fire later) would tear the connection down.
  const controllers = paths.map(() => new AbortController())
  const settled = paths.map(() => false)
  const abortPending = (): void => {
    controllers.forEach((c, i) => settled[i] === true || c.abort())
  }
  const timer = setTimeout(abortPending, options.timeout ?? DEFAULT_DIAL_TIMEOUT)
  options.signal?.addEventListener('abort', abortPending, { once: true })
  const dialer = (node as unknown as { components: { transportManager: TransportDialer } })
    .components.transportManager

  const attempts = paths.map(async (path, i) => {
    try {
      const connection = await dialer.dial(path, { signal: controllers[i]!.signal })
      if (connection.remotePeer.toString() !== target.peerId) {
        await connection.close()
        throw new Error(`${path.toString()} answered as ${connection.remotePeer.toString()}`)
      }
      return connection
    } finally {
      settled[i] = true
    }
  })

  try {
    const winner = await Promise.any(attempts)
    abortPending()
    // Late winners on other paths are closed: one connection per agent.
    for (const attempt of attempts) {
      attempt.then(
        (c) => (c === winner ? undefined : c.close()),
        () => undefined,
      )
    }
    return winner
  } catch (err) {
    const reasons = err instanceof AggregateError ? err.errors : [err]
    throw new MeshError('MESH_CONNECT_FAILED', 'Could not reach the workspace agent on any path.', {
      detail: reasons.map((e: unknown, i) => `${paths[i]?.toString()}: ${String(e)}`).join('; '),
      cause: err,
    })
  } finally {
    clearTimeout(timer)
    options.signal?.removeEventListener('abort', abortPending)
  }
}

/** Opens a stream for `protocol` and sends the ticket as its first frame. */
export async function openMeshStream(
  connection: Connection,
  protocol: string,
  ticket: string,
  options: { signal?: AbortSignal } = {},
): Promise<Duplex> {
  const stream = await connection.newStream(protocol, {
    signal: options.signal,
    runOnLimitedConnection: true,
  })
  const duplex = toDuplex(stream)
  writeTicketFrame(duplex, ticket)
  return duplex
}

/** Describes the path a connection takes, e.g. `direct (tcp)` or `relayed via <relay>`. */
export function describePath(connection: Connection): string {
  const addr = connection.remoteAddr.toString()
  if (addr.includes('/p2p-circuit')) {
    const relay = addr.split('/p2p-circuit')[0] ?? addr
    return `relayed via ${relay}`
  }
  if (addr.includes('/webrtc')) return 'direct (webrtc)'
  return 'direct (tcp)'
}
