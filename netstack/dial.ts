/**
 * The client side of a mesh connection: dial the agent on every known path
 * at once (its direct addresses and each relay circuit), keep the best
 * connection that comes up, upgrade a relayed one to a direct one where the
 * network allows, and open ticketed streams.
 *
 * Policy:
 * - A direct connection wins at once. A relayed one that comes up first
 *   waits up to `preferDirectMs` for a direct attempt still under way, then
 *   wins; the direct attempts go on (until the dial timeout), and a direct
 *   connection that comes up later is kept beside it: later streams use it
 *   (`bestConnection`), streams already on the relayed one stay there.
 * - With a WebRTC transport on the node, a relayed connection is upgraded:
 *   WebRTC is signalled over it and hole-punches through NATs (ICE with the
 *   node's STUN servers). Attempts back off (2 s doubling to 60 s) while the
 *   relayed connection is open and no direct one exists.
 * - A relay that answers NO_RESERVATION is asked again every 500 ms until
 *   the deadline: the agent is registered but still making (or, after a
 *   relay restart, remaking) its reservation.
 * - Nothing here closes a connection that carries streams: a failed upgrade
 *   or direct attempt only ends its own attempt (field case B12). A relayed
 *   connection is closed only once a direct one exists and it has carried no
 *   stream for two checks in a row.
 *
 * Why WebRTC and not DCUtR (checked against @libp2p/dcutr 3.0.28's
 * dist/src/dcutr.js and utils.js, the latest release): DCUtR hole-punches
 * by having both peers dial each other's addresses at once, and
 * - it dials only addresses that `isPublicAndDialable` passes, which drops
 *   every private address (`isPrivate` of @libp2p/utils): peers on a VPN or
 *   a corporate network, and every address of our netns tests (10.231/16),
 *   are never tried;
 * - with TCP the punch only works when the dial leaves from the port the
 *   peer listens on (the NAT mapping identify observed); @libp2p/tcp has no
 *   port reuse (Node's net sockets cannot bind a dial to a listening port),
 *   so the observed address leads nowhere (its source notes TCP is the
 *   only transport it punches with; js-libp2p has no QUIC for Node);
 * - on success it closes the relayed connection (`relayedConnection.close()`
 *   in both the unilateral and the hole-punch path), ending every stream on
 *   it: a running SSH session or forward would die (field case B12).
 * WebRTC's ICE does the same punch over UDP with STUN-learned mappings (the
 * coordinator runs the STUN server), works between private addresses, and
 * leaves the relayed connection to us. So @libp2p/dcutr is not installed:
 * on these networks it would add a protocol that never succeeds.
 */
import type { Connection } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Duplex } from 'node:stream'
import { MeshError } from '../sdk/errors.ts'
import { createLogger, type Logger } from '../sdk/logger.ts'
import { MAX_STREAMS_PER_PROTOCOL } from './constants.ts'
import { writeTicketFrame } from './frames.ts'
import type { MeshNode } from './node.ts'
import { toDuplex } from './stream-duplex.ts'

/** How long to wait for any path to the agent, in ms. */
export const DEFAULT_DIAL_TIMEOUT = 20_000
/** How long a relayed connection waits for a pending direct attempt before it wins, in ms. */
export const DEFAULT_PREFER_DIRECT_MS = 500
/** First wait before another upgrade attempt, in ms; doubles up to UPGRADE_MAX_DELAY_MS. */
export const UPGRADE_FIRST_DELAY_MS = 2000
export const UPGRADE_MAX_DELAY_MS = 60_000
/** How long one WebRTC upgrade attempt may take, in ms. */
const UPGRADE_ATTEMPT_TIMEOUT_MS = 10_000
/** How soon a relay circuit refused with NO_RESERVATION is tried again, in ms. */
const NO_RESERVATION_RETRY_MS = 500
const NO_RESERVATION = /NO_RESERVATION/
/** How often an upgraded peer's relayed connections are checked for idleness, in ms. */
const IDLE_RELAY_CHECK_MS = 10_000

export interface AgentTarget {
  peerId: string
  /** The agent's own listen addresses, without /p2p/. */
  addrs: string[]
  /** Relay multiaddrs ending in /p2p/<relay>. */
  relays: string[]
}

export interface DialOptions {
  signal?: AbortSignal
  /** The whole dial's deadline, in ms (DEFAULT_DIAL_TIMEOUT). */
  timeout?: number
  /** See DEFAULT_PREFER_DIRECT_MS. */
  preferDirectMs?: number
  /** Upgrade a relayed connection over WebRTC when the node can (default true). */
  upgrade?: boolean
  log?: Logger
}

/** Every path to the agent: direct addresses first, then relay circuits. */
export function agentPaths(target: AgentTarget): Multiaddr[] {
  const direct = target.addrs
    .filter((a) => !a.includes('/p2p-circuit'))
    .map((a) => multiaddr(`${a}/p2p/${target.peerId}`))
  const relayed = target.relays.map((r) => multiaddr(`${r}/p2p-circuit/p2p/${target.peerId}`))
  return [...direct, ...relayed]
}

export type PathKind = 'tcp' | 'webrtc' | 'relayed'

/** What a connection (or a dial address) goes through. */
export function pathKind(addr: Multiaddr | Connection): PathKind {
  const text = ('remoteAddr' in addr ? addr.remoteAddr : addr).toString()
  // A WebRTC address names the relay it was signalled through
  // (<relay>/p2p-circuit/webrtc/p2p/<peer>), but its data flows directly.
  if (text.includes('/webrtc')) return 'webrtc'
  if (text.includes('/p2p-circuit')) return 'relayed'
  return 'tcp'
}

export function isRelayed(connection: Connection): boolean {
  return pathKind(connection) === 'relayed'
}

const RANK: Record<PathKind, number> = { tcp: 0, webrtc: 1, relayed: 2 }

/** The best open connection to `peerId`: direct TCP, then WebRTC, then relayed. */
export function bestConnection(node: MeshNode, peerId: string): Connection | undefined {
  let best: Connection | undefined
  for (const c of node.getConnections()) {
    if (c.remotePeer.toString() !== peerId || c.status !== 'open') continue
    if (best === undefined || RANK[pathKind(c)] < RANK[pathKind(best)]) best = c
  }
  return best
}

interface TransportManager {
  dial(ma: Multiaddr, options: { signal: AbortSignal }): Promise<Connection>
  dialTransportForMultiaddr(ma: Multiaddr): unknown
}

function transportManager(node: MeshNode): TransportManager {
  return (node as unknown as { components: { transportManager: TransportManager } }).components
    .transportManager
}

let defaultLog: Logger | undefined
function logger(options: DialOptions): Logger {
  return options.log ?? (defaultLog ??= createLogger('mesh:dial', 'warn'))
}

/**
 * Dials all paths in parallel and resolves with the best connection, as
 * the policy above says. libp2p's own dial queue tries one address of a
 * peer after another, so a direct address that silently drops packets
 * would hold up the relay for a whole dial timeout; dialing each path
 * through the transport manager races them instead.
 */
export async function dialAgent(
  node: MeshNode,
  target: AgentTarget,
  options: DialOptions = {},
): Promise<Connection> {
  const log = logger(options)
  const existing = bestConnection(node, target.peerId)
  if (existing !== undefined) {
    if (isRelayed(existing) && options.upgrade !== false) upgradeLater(node, existing, log)
    return existing
  }

  const paths = agentPaths(target)
  if (paths.length === 0) {
    throw new MeshError('MESH_CONNECT_FAILED', 'The agent has no known address and no relay.')
  }
  const relayedPath = paths.map((p) => pathKind(p) === 'relayed')

  // One controller per path, aborted only while its dial is pending: a
  // connection keeps its dial signal, so aborting it after the dial won
  // (or letting a timeout signal fire later) would tear the connection down.
  const controllers = paths.map(() => new AbortController())
  const pending = paths.map(() => true)
  const abortPending = (which: (i: number) => boolean = () => true): void => {
    controllers.forEach((c, i) => pending[i] === true && which(i) && c.abort())
  }
  const abortAll = (): void => abortPending()
  const timer = setTimeout(abortAll, options.timeout ?? DEFAULT_DIAL_TIMEOUT)
  options.signal?.addEventListener('abort', abortAll, { once: true })
  node.addEventListener('stop', abortAll, { once: true })
  const dialer = transportManager(node)

  const attempts = paths.map(async (path, i) => {
    const signal = controllers[i]!.signal
    try {
      let connection: Connection
      for (;;) {
        try {
          connection = await dialer.dial(path, { signal })
          break
        } catch (err) {
          // The agent is registered but not (yet, or not again) on this
          // relay: it is starting, or re-reserving after a relay restart.
          if (!relayedPath[i] || signal.aborted || !NO_RESERVATION.test(String(err))) throw err
          await sleep(NO_RESERVATION_RETRY_MS, signal)
        }
      }
      if (connection.remotePeer.toString() !== target.peerId) {
        await connection.close()
        throw new Error(`${path.toString()} answered as ${connection.remotePeer.toString()}`)
      }
      return connection
    } finally {
      pending[i] = false
    }
  })
  void Promise.allSettled(attempts).then(() => {
    clearTimeout(timer)
    options.signal?.removeEventListener('abort', abortAll)
    node.removeEventListener('stop', abortAll)
  })

  const winner = await new Promise<Connection | undefined>((resolve) => {
    let decided: Connection | undefined
    let relayedCandidate: Connection | undefined
    let laterDirect: Connection | undefined
    let grace: NodeJS.Timeout | undefined
    let settled = 0
    const directPending = (): boolean => pending.some((p, i) => p && !relayedPath[i])

    const decide = (connection: Connection): void => {
      decided = connection
      clearTimeout(grace)
      // A direct winner needs nothing else; a relayed one lets the direct
      // attempts go on, to be kept if they come up.
      abortPending((i) => relayedPath[i] === true || !isRelayed(connection))
      resolve(connection)
    }

    const late = (connection: Connection): void => {
      // Fresh connections carry no streams yet: closing them is safe.
      if (decided === undefined || !isRelayed(decided) || isRelayed(connection)) {
        void connection.close().catch(() => undefined)
      } else if (laterDirect === undefined) {
        laterDirect = connection
        log.debug({ path: describePath(connection) }, 'a direct connection came up after the relay')
      } else {
        void connection.close().catch(() => undefined)
      }
    }

    for (const attempt of attempts) {
      attempt.then(
        (connection) => {
          settled++
          if (decided !== undefined) late(connection)
          else if (!isRelayed(connection)) {
            if (relayedCandidate !== undefined) void relayedCandidate.close().catch(() => undefined)
            decide(connection)
          } else if (relayedCandidate !== undefined) {
            void connection.close().catch(() => undefined)
          } else {
            relayedCandidate = connection
            if (!directPending()) decide(connection)
            else
              grace = setTimeout(
                () => decide(connection),
                options.preferDirectMs ?? DEFAULT_PREFER_DIRECT_MS,
              )
          }
        },
        () => {
          settled++
          if (decided !== undefined) return
          if (relayedCandidate !== undefined && !directPending()) decide(relayedCandidate)
          else if (settled === attempts.length) resolve(undefined)
        },
      )
    }
  })

  if (winner === undefined) {
    const results = await Promise.allSettled(attempts)
    const detail = results
      .map(
        (r, i) => `${paths[i]?.toString()}: ${r.status === 'rejected' ? String(r.reason) : 'ok'}`,
      )
      .join('; ')
    throw new MeshError('MESH_CONNECT_FAILED', 'Could not reach the workspace agent on any path.', {
      detail,
    })
  }
  log.debug({ peer: target.peerId, path: describePath(winner) }, 'connected to the agent')
  if (isRelayed(winner) && options.upgrade !== false) upgradeLater(node, winner, log)
  return winner
}

/** Peers with an upgrade loop running, per node. */
const upgrading = new WeakMap<MeshNode, Set<string>>()

/** The WebRTC address signalled through `relayed`'s relay. */
export function webrtcPathFor(relayed: Connection): Multiaddr {
  const addr = relayed.remoteAddr.toString()
  const relay = addr.split('/p2p-circuit')[0] ?? addr
  return multiaddr(`${relay}/p2p-circuit/webrtc/p2p/${relayed.remotePeer.toString()}`)
}

/**
 * Upgrades to a direct connection in the background (see the policy at
 * the top), once per peer at a time. Does nothing on a node without a
 * WebRTC transport.
 */
function upgradeLater(node: MeshNode, relayed: Connection, log: Logger): void {
  const peer = relayed.remotePeer.toString()
  const tm = transportManager(node)
  if (tm.dialTransportForMultiaddr(webrtcPathFor(relayed)) == null) return
  let peers = upgrading.get(node)
  if (peers === undefined) upgrading.set(node, (peers = new Set()))
  if (peers.has(peer)) return
  peers.add(peer)
  void upgradeLoop(node, peer, log).finally(() => peers.delete(peer))
}

async function upgradeLoop(node: MeshNode, peer: string, log: Logger): Promise<void> {
  const tm = transportManager(node)
  const running = (): boolean => node.status === 'started'
  const relayedOpen = (): Connection | undefined =>
    node
      .getConnections()
      .find((c) => c.remotePeer.toString() === peer && c.status === 'open' && isRelayed(c))
  const direct = (): Connection | undefined => {
    const best = bestConnection(node, peer)
    return best !== undefined && !isRelayed(best) ? best : undefined
  }

  let delay = UPGRADE_FIRST_DELAY_MS
  for (let attempt = 1; running(); attempt++) {
    const relayed = relayedOpen()
    if (relayed === undefined) return
    if (direct() !== undefined) break
    const path = webrtcPathFor(relayed)
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), UPGRADE_ATTEMPT_TIMEOUT_MS)
    const onStop = (): void => controller.abort()
    node.addEventListener('stop', onStop, { once: true })
    try {
      log.debug({ peer, attempt, path: path.toString() }, 'upgrading the relayed connection')
      const connection = await tm.dial(path, { signal: controller.signal })
      log.info({ peer, path: describePath(connection), attempt }, 'upgraded to a direct connection')
      break
    } catch (err) {
      if (!running()) return
      log.debug(
        { peer, attempt, err: (err as Error).message, retry_ms: delay },
        'upgrade attempt failed; the relayed connection stays',
      )
    } finally {
      clearTimeout(timer)
      node.removeEventListener('stop', onStop)
    }
    await sleep(delay)
    delay = Math.min(delay * 2, UPGRADE_MAX_DELAY_MS)
  }

  // Upgraded: relayed connections to the peer that stay idle are closed.
  const idleSince = new Map<string, number>()
  while (running() && direct() !== undefined) {
    await sleep(IDLE_RELAY_CHECK_MS)
    const relayed = node
      .getConnections()
      .filter((c) => c.remotePeer.toString() === peer && c.status === 'open' && isRelayed(c))
    if (relayed.length === 0) return
    for (const c of relayed) {
      if (c.streams.length > 0) {
        idleSince.delete(c.id)
      } else if (idleSince.has(c.id) && direct() !== undefined) {
        log.debug({ peer }, 'closing the idle relayed connection after the upgrade')
        void c.close().catch(() => undefined)
      } else {
        idleSince.set(c.id, Date.now())
      }
    }
  }
}

/** Waits `ms`; with a signal, rejects when it aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error)
      return
    }
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(signal?.reason as Error)
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    if (signal === undefined) timer.unref()
    signal?.addEventListener('abort', onAbort, { once: true })
  })
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
    // libp2p allows 64 outbound streams per protocol by default: the 65th
    // parallel port-forward connection would fail (field case B10).
    maxOutboundStreams: MAX_STREAMS_PER_PROTOCOL,
  })
  const duplex = toDuplex(stream)
  writeTicketFrame(duplex, ticket)
  return duplex
}

/**
 * Describes the path a connection takes: `direct (tcp)`, `direct (webrtc)`
 * or `relayed via <relay>`.
 */
export function describePath(connection: Connection): string {
  switch (pathKind(connection)) {
    case 'webrtc':
      return 'direct (webrtc)'
    case 'relayed': {
      const addr = connection.remoteAddr.toString()
      return `relayed via ${addr.split('/p2p-circuit')[0] ?? addr}`
    }
    default:
      return 'direct (tcp)'
  }
}
