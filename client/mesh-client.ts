/**
 * The client's way onto the mesh, shared by every command that talks to an
 * agent (ssh, port-forward, ping, speedtest):
 *
 * 1. A throwaway libp2p identity for this run; the coordinator issues a
 *    ticket bound to it (`POST /workspaces/NAME/connect`), and while the
 *    workspace is still starting we wait and ask again.
 * 2. Dial the agent on every path at once (netstack/dial.ts) and keep ONE
 *    connection for every stream of the run.
 * 3. Open ticketed streams on it. When that connection has died, the next
 *    stream asks the coordinator for a fresh ticket and addresses (the agent
 *    may have restarted elsewhere, the workspace stopped) and dials again,
 *    so a long-running forward recovers without the user doing anything.
 * 4. Renew the ticket at RENEW_FRACTION of its lifetime while the mesh is
 *    open, for the same peer id: tickets last an hour, forwards run for
 *    days, and the relay's grant for our peer is renewed with the ticket.
 *    Streams already open are unaffected: the agent checks a ticket only
 *    when a stream opens.
 */
import type { Connection } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Duplex } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  bestConnection,
  describePath,
  dialAgent,
  isRelayed,
  openMeshStream,
  type AgentTarget,
} from '../netstack/dial.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, meshWebrtc, type MeshNode } from '../netstack/node.ts'
import { isUnreachable, type ApiClient } from '../sdk/api-client.ts'
import type { ConnectResponse, Workspace } from '../sdk/api-types.ts'
import { HOUR, SECOND } from '../sdk/config.ts'
import { isMeshError, MeshError, type ErrorCode } from '../sdk/errors.ts'

/** How long to wait for a starting workspace's agent, in ms. */
export const AGENT_WAIT_MS = 60 * SECOND
const AGENT_RETRY_MS = 1 * SECOND
/** A ticket is renewed once this fraction of its lifetime has passed. */
export const RENEW_FRACTION = 0.8
/** Never renew sooner than this after the last renewal, in ms. */
export const MIN_RENEW_DELAY_MS = 1 * SECOND
/** First wait after a failed renewal, in ms; it doubles, bounded by the time left. */
const RENEW_RETRY_MS = 5 * SECOND
/**
 * A ticket this close to its expiry is renewed before a stream is opened
 * with it, in ms (less for short-lived tickets: a tenth of their lifetime).
 */
const TICKET_MARGIN_MS = 10 * SECOND
/** Assumed ticket lifetime when the coordinator's expiresAt cannot be read, in ms. */
const DEFAULT_TICKET_LIFETIME_MS = 1 * HOUR
const NODE_STOP_MS = 2 * SECOND

const RETRYABLE: ReadonlySet<ErrorCode> = new Set([
  'MESH_AGENT_NOT_CONNECTED',
  'MESH_WORKSPACE_NOT_RUNNING',
])

/**
 * Which paths to the agent to dial: `any` (its direct addresses and the
 * relays, racing), `direct` (no relay) or `relay` (only the relays, with no
 * upgrade to a direct path; for diagnosing relayed paths, field case B13).
 */
export type MeshPaths = 'any' | 'direct' | 'relay'

export const MESH_PATHS: readonly MeshPaths[] = ['any', 'direct', 'relay']

export interface WorkspaceMeshOptions {
  /** Default `any`. */
  paths?: MeshPaths
  signal?: AbortSignal
  /** Prints progress for people ("Waiting for the agent..."); default: a line on stderr. */
  notice?: (line: string) => void
}

export interface OpenStreamOptions {
  /** Written right after the ticket frame: the protocol's first frame. */
  header?: Uint8Array
  signal?: AbortSignal
}

/** A ticketed stream and the connection that carries it. */
export interface MeshStream {
  duplex: Duplex
  connection: Connection
  /** The connection's path: `direct (tcp)`, `relayed via <relay>`, ... */
  path: string
}

export interface WorkspaceMesh {
  readonly workspace: string
  readonly node: MeshNode
  /** Our peer id: every ticket is bound to it. */
  readonly peerId: string
  /** The connection new streams go on (the latest one dialed). */
  readonly connection: Connection
  /** The latest connect answer: agent, relays, ticket and its expiry. */
  readonly target: ConnectResponse
  readonly ticket: string
  /** Opens a ticketed stream, dialing again first when the connection has died. */
  openStream(protocol: string, options?: OpenStreamOptions): Promise<MeshStream>
  /** The path of the current connection. */
  path(): string
  /** Stops renewing and stops the node (bounded by NODE_STOP_MS). */
  close(): Promise<void>
}

/**
 * Gets a ticket for `workspace` and a connection to its agent. Throws the
 * coordinator's error (not running, not yours) or MESH_CONNECT_FAILED.
 */
export async function openWorkspaceMesh(
  api: ApiClient,
  workspace: string,
  options: WorkspaceMeshOptions = {},
): Promise<WorkspaceMesh> {
  const notice = options.notice ?? ((line: string) => process.stderr.write(line + '\n'))
  // The ticket request and the node's start-up go on side by side. WebRTC
  // (to upgrade a relayed connection) uses the STUN servers of the latest
  // connect answer; with a restricted path there is no upgrade to make.
  const paths = options.paths ?? 'any'
  const ice: { servers?: string[] } = {}
  const privateKey = await newPeerKey()
  const starting = createMeshNode({
    privateKey,
    listen: [],
    webrtc: paths === 'any' ? meshWebrtc(() => ice.servers) : false,
  })
  starting.catch(() => undefined)
  let node: MeshNode | undefined
  try {
    const peerId = peerIdFromPrivateKey(privateKey).toString()
    const answer = await connectWithRetry(api, workspace, peerId, notice, options.signal)
    const receivedAt = Date.now()
    ice.servers = answer.iceServers
    node = await starting
    const connection = await dialAgent(node, agentTarget(answer, paths), {
      signal: options.signal,
      upgrade: paths === 'any',
    })
    return new MeshSession({
      api,
      workspace,
      node,
      peerId,
      notice,
      answer,
      receivedAt,
      connection,
      paths,
      onAnswer: (next) => {
        ice.servers = next.iceServers ?? ice.servers
      },
    })
  } catch (err) {
    node ??= await starting.catch(() => undefined)
    if (node !== undefined) await stopNode(node)
    throw err
  }
}

interface MeshSessionInit {
  api: ApiClient
  workspace: string
  node: MeshNode
  peerId: string
  notice: (line: string) => void
  answer: ConnectResponse
  receivedAt: number
  connection: Connection
  paths: MeshPaths
  /** Called with every later connect answer (renewals). */
  onAnswer?: (answer: ConnectResponse) => void
}

class MeshSession implements WorkspaceMesh {
  readonly workspace: string
  readonly node: MeshNode
  readonly peerId: string
  private readonly api: ApiClient
  private readonly notice: (line: string) => void
  private readonly paths: MeshPaths
  private readonly onAnswer: ((answer: ConnectResponse) => void) | undefined
  private answer: ConnectResponse
  /** Local time the ticket expires at, ms since the epoch. */
  private expiresAt = 0
  /** Renew before opening a stream when the ticket has less than this left, in ms. */
  private margin = TICKET_MARGIN_MS
  private current: Connection
  /** Per connection: settles once its first stream has been negotiated (see openOn). */
  private readonly ready = new WeakMap<Connection, Promise<void>>()
  private redialing: Promise<Connection> | undefined
  private renewing: Promise<void> | undefined
  private renewTimer: NodeJS.Timeout | undefined
  private renewFailures = 0
  private closed = false

  constructor(init: MeshSessionInit) {
    this.api = init.api
    this.workspace = init.workspace
    this.node = init.node
    this.peerId = init.peerId
    this.notice = init.notice
    this.paths = init.paths
    this.onAnswer = init.onAnswer
    this.answer = init.answer
    this.current = init.connection
    this.accept(init.answer, init.receivedAt)
  }

  get connection(): Connection {
    return this.best() ?? this.current
  }

  get target(): ConnectResponse {
    return this.answer
  }

  get ticket(): string {
    return this.answer.ticket
  }

  path(): string {
    return describePath(this.connection)
  }

  async openStream(protocol: string, options: OpenStreamOptions = {}): Promise<MeshStream> {
    if (this.closed) throw new TypeError('the workspace mesh is closed')
    if (Date.now() >= this.expiresAt - this.margin) {
      // A coordinator that cannot answer right now does not stop a ticket
      // that is still valid: the agent checks it offline.
      await this.renew().catch((err: unknown) => {
        if (Date.now() >= this.expiresAt) throw err
      })
    }

    let connection = await this.usableConnection(options.signal)
    let duplex: Duplex
    try {
      duplex = await this.openOn(connection, protocol, options.signal)
    } catch (err) {
      // A connection that died under us is dialed again, once; a live one
      // that refuses the stream (a protocol the agent lacks) is an answer.
      if (connection.status === 'open' || options.signal?.aborted === true) {
        throw streamFailed(protocol, err)
      }
      connection = await this.usableConnection(options.signal)
      duplex = await this.openOn(connection, protocol, options.signal).catch(
        (retryErr: unknown) => {
          throw streamFailed(protocol, retryErr)
        },
      )
    }
    if (options.header !== undefined) duplex.write(options.header)
    return { duplex, connection, path: describePath(connection) }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.renewTimer)
    await stopNode(this.node)
  }

  /**
   * Opens a ticketed stream on `connection`. The first stream on a new
   * connection opens alone and the others wait for it: until the agent's
   * side has finished setting the connection up, its muxer counts streams
   * as "early", and past 10 of them it aborts the whole connection
   * (@libp2p/utils `maxEarlyStreams`), which a burst of forwarded
   * connections right after a dial would hit. A stream whose protocol
   * negotiation completed proves the agent is listening.
   */
  private async openOn(
    connection: Connection,
    protocol: string,
    signal?: AbortSignal,
  ): Promise<Duplex> {
    const ready = this.ready.get(connection)
    if (ready !== undefined) {
      await ready
      return openMeshStream(connection, protocol, this.ticket, { signal })
    }
    const first = openMeshStream(connection, protocol, this.ticket, { signal })
    this.ready.set(
      connection,
      first.then(
        () => undefined,
        () => undefined,
      ),
    )
    return first
  }

  /**
   * The best open connection to the current agent (a direct one that came
   * up beside a relayed one wins, see netstack/dial.ts), else a new one.
   */
  private usableConnection(signal?: AbortSignal): Promise<Connection> {
    const best = this.best()
    if (best !== undefined) {
      this.current = best
      return Promise.resolve(best)
    }
    this.redialing ??= this.redial(signal).finally(() => {
      this.redialing = undefined
    })
    return this.redialing
  }

  /**
   * Dials again after the connection died. The coordinator is asked first:
   * the workspace may have stopped, been deleted or moved to a new agent,
   * or our access may have ended (a suspended user, a revoked ticket), and
   * its answer says so at once where a dial to the old agent would only
   * time out or succeed into refusals. A coordinator that cannot be reached
   * does not stop us: the ticket we hold still opens the agent's door.
   */
  private async redial(signal?: AbortSignal): Promise<Connection> {
    const previous = this.current
    await this.renew().catch((err: unknown) => {
      if (!isUnreachable(err)) throw err
    })
    const connection = await this.dial(signal)
    if (previous !== connection && previous.status === 'open') {
      // Connected to the workspace's new agent: the old one's streams are over.
      previous.abort(new Error('the workspace agent changed'))
    }
    this.current = connection
    this.notice(`Reconnected to ${this.workspace} ${viaPath(describePath(connection))}.`)
    return connection
  }

  private dial(signal?: AbortSignal): Promise<Connection> {
    const target = agentTarget(this.answer, this.paths)
    return dialAgent(this.node, target, { signal, upgrade: this.paths === 'any' })
  }

  private agentPeerId(): string {
    return this.answer.agent.peerId
  }

  private best(): Connection | undefined {
    if (this.paths === 'any') return bestConnection(this.node, this.agentPeerId())
    // Restricted to one kind of path: only a connection of that kind counts.
    const peer = this.agentPeerId()
    return this.node
      .getConnections()
      .find(
        (c) => c.status === 'open' && c.remotePeer.toString() === peer && matches(c, this.paths),
      )
  }

  /** Asks the coordinator for a new ticket (one request at a time). */
  private renew(): Promise<void> {
    this.renewing ??= (async () => {
      try {
        const answer = await this.api.connect(this.workspace, this.peerId)
        this.accept(answer, Date.now())
        this.onAnswer?.(answer)
      } finally {
        this.renewing = undefined
      }
    })()
    return this.renewing
  }

  private accept(answer: ConnectResponse, receivedAt: number): void {
    const expiry = Date.parse(answer.expiresAt)
    const lifetime = Number.isNaN(expiry) ? DEFAULT_TICKET_LIFETIME_MS : expiry - receivedAt
    this.answer = answer
    this.expiresAt = receivedAt + lifetime
    this.margin = Math.min(TICKET_MARGIN_MS, (lifetime * (1 - RENEW_FRACTION)) / 2)
    this.renewFailures = 0
    this.scheduleRenewal(Math.max(MIN_RENEW_DELAY_MS, lifetime * RENEW_FRACTION))
  }

  private scheduleRenewal(delay: number): void {
    clearTimeout(this.renewTimer)
    if (this.closed) return
    this.renewTimer = setTimeout(() => {
      this.renew().catch((err: unknown) => {
        this.renewFailures++
        const left = this.expiresAt - Date.now()
        const retry = RENEW_RETRY_MS * 2 ** Math.min(this.renewFailures - 1, 6)
        if (left > MIN_RENEW_DELAY_MS) {
          this.scheduleRenewal(Math.max(MIN_RENEW_DELAY_MS, Math.min(retry, left / 2)))
        } else if (!this.closed) {
          // Open streams keep working; new ones ask again when they open.
          this.notice(`Could not renew the ticket for ${this.workspace}: ${describe(err)}`)
        }
      })
    }, delay)
    // Renewal alone must not keep a finished command alive.
    this.renewTimer.unref()
  }
}

function agentTarget(answer: ConnectResponse, paths: MeshPaths): AgentTarget {
  return {
    peerId: answer.agent.peerId,
    addrs: paths === 'relay' ? [] : answer.agent.addrs,
    relays: paths === 'direct' ? [] : answer.relays,
  }
}

function matches(connection: Connection, paths: MeshPaths): boolean {
  if (paths === 'any') return true
  return isRelayed(connection) === (paths === 'relay')
}

/**
 * Asks the coordinator for a ticket. While the workspace is still starting
 * (or running but its agent has not registered yet), waits and asks again,
 * for up to AGENT_WAIT_MS.
 */
async function connectWithRetry(
  api: ApiClient,
  name: string,
  peerId: string,
  notice: (line: string) => void,
  signal?: AbortSignal,
): Promise<ConnectResponse> {
  const deadline = Date.now() + AGENT_WAIT_MS
  let told = false
  for (;;) {
    try {
      return await api.connect(name, peerId, { signal })
    } catch (err) {
      if (!isMeshError(err) || !RETRYABLE.has(err.code) || Date.now() >= deadline) throw err
      const workspace = await api.workspace(name, { signal })
      if (!mayComeUp(workspace, err.code)) throw err
      if (!told) {
        notice('Waiting for the agent...')
        told = true
      }
      await sleep(AGENT_RETRY_MS, undefined, { signal })
    }
  }
}

function mayComeUp(workspace: Workspace, code: ErrorCode): boolean {
  if (workspace.status === 'pending' || workspace.status === 'starting') return true
  // An agent that said it stopped will not come back by itself.
  const stopped = workspace.agent?.lifecycle === 'off'
  return workspace.status === 'running' && code === 'MESH_AGENT_NOT_CONNECTED' && !stopped
}

/**
 * A path for a sentence: `via direct (tcp)`, `relayed via <relay>`. Every
 * command that reports a path words it this way.
 */
export function viaPath(path: string): string {
  return path.startsWith('relayed ') ? path : `via ${path}`
}

/** Stops the node, giving up waiting after NODE_STOP_MS (a hung close must not hang the CLI). */
export async function stopNode(node: MeshNode): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    Promise.resolve()
      .then(() => node.stop())
      .catch(() => undefined),
    new Promise((resolve) => {
      timer = setTimeout(resolve, NODE_STOP_MS)
    }),
  ])
  clearTimeout(timer)
}

function streamFailed(protocol: string, cause: unknown): MeshError {
  if (isMeshError(cause)) return cause
  return new MeshError('MESH_CONNECT_FAILED', 'Could not open a stream to the workspace agent.', {
    detail: `${protocol}: ${describe(cause)}`,
    cause,
  })
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
