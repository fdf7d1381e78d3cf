/**
 * The workspace agent (`coder-mesh agent`): registers with the coordinator,
 * joins the mesh with a stable peer id, keeps a reservation on the
 * coordinator's relays, and serves SSH, port forwarding, ping and speed
 * test (agent/mesh-services.ts) to clients holding a ticket.
 *
 * Only outbound connections are needed: to the coordinator's HTTP API and
 * to its relays. Direct addresses are registered too, for clients that can
 * reach them.
 */
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { KeyObject } from 'node:crypto'
import { once } from 'node:events'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import { loadOrCreatePeerKey } from '../netstack/keys.ts'
import { createMeshNode, meshWebrtc, type MeshNode } from '../netstack/node.ts'
import { serveMeshProtocol } from '../netstack/serve.ts'
import { importTicketPublicKey } from '../netstack/ticket.ts'
import { ApiClient } from '../sdk/api-client.ts'
import type { AgentRegisterResponse } from '../sdk/api-types.ts'
import { agentDir, ENV_AGENT_TOKEN, ENV_URL, envAgentToken, envUrl, SECOND } from '../sdk/config.ts'
import { MeshError } from '../sdk/errors.ts'
import { createLogger, type Logger } from '../sdk/logger.ts'
import {
  AGENT_VERSION,
  backoffDelay,
  describeRegisterError,
  isFatalRegisterError,
  registerUntilDone,
} from './register.ts'
import { startWorkspaceServices } from './lifecycle.ts'
import { serveMeshServices } from './mesh-services.ts'
import { RelayKeeper } from './relays.ts'
import { createSshService } from './ssh.ts'
import { meteredNode, TrafficMeter } from './stats.ts'

export const PEER_KEY_FILE = 'agent-key'
export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']
/** Used when the coordinator names no usable heartbeat period, in seconds. */
const DEFAULT_HEARTBEAT_SECONDS = 30

export interface AgentInit {
  /** The coordinator's base URL. */
  url: string
  /** The agent token (never logged). */
  token: string
  /** The agent's own folder: its libp2p identity and SSH host key live here. */
  dir: string
  /** libp2p listen addresses; default /ip4/0.0.0.0/tcp/0. */
  listen?: string[]
  log?: Logger
  /** Aborts startup (registration retries included); after startup, use stop(). */
  signal?: AbortSignal
  /**
   * Called when the coordinator refuses the token after startup: the
   * workspace was stopped, deleted or started again with a new agent, so
   * this agent is retired and should stop.
   */
  onRetired?: (err: unknown) => void
}

export interface RunningAgent {
  peerId: string
  stop(): Promise<void>
}

/** The node's direct addresses for the coordinator: no circuits, no /p2p/<self>. */
export function directAddrs(node: MeshNode): string[] {
  const self = `/p2p/${node.peerId.toString()}`
  const out = new Set<string>()
  for (const ma of node.getMultiaddrs()) {
    let addr = ma.toString()
    if (addr.includes('/p2p-circuit')) continue
    if (addr.endsWith(self)) addr = addr.slice(0, -self.length)
    out.add(addr)
  }
  return [...out]
}

function heartbeatMs(seconds: unknown): number {
  const s = typeof seconds === 'number' && Number.isFinite(seconds) ? seconds : NaN
  return (Number.isNaN(s) ? DEFAULT_HEARTBEAT_SECONDS : Math.min(3600, Math.max(1, s))) * SECOND
}

/**
 * Starts the agent. Resolves once it is registered, on the mesh and serving
 * SSH; until the coordinator answers, it retries with backoff. Rejects with
 * the coordinator's MESH_UNAUTHENTICATED error when the token is refused.
 */
export async function startAgent(init: AgentInit): Promise<RunningAgent> {
  const baseLog = init.log ?? createLogger('mesh:agent')
  const privateKey = await loadOrCreatePeerKey(join(init.dir, PEER_KEY_FILE))
  const peerId = peerIdFromPrivateKey(privateKey).toString()
  let log = baseLog.child({ peer_id: peerId })

  const controller = new AbortController()
  const signal = controller.signal
  const abort = (): void => controller.abort(init.signal?.reason)
  if (init.signal?.aborted === true) abort()
  init.signal?.addEventListener('abort', abort, { once: true })

  const api = new ApiClient({ url: init.url, token: init.token })
  const register = (addrs: string[]): Promise<AgentRegisterResponse> =>
    registerUntilDone(api, { peerId, addrs, version: AGENT_VERSION }, log, signal)

  let node: MeshNode | undefined
  let relays: RelayKeeper | undefined
  let closeSsh: (() => Promise<void>) | undefined
  try {
    log.info({ coordinator: new URL(init.url).origin, version: AGENT_VERSION }, 'agent starting')
    // The node starts before the first registration, so that registration
    // already carries the direct addresses: a client dialing right after
    // the workspace is created goes direct on a LAN. Nothing on it needs
    // the ticket key yet: the protocols are served once it is known.
    // Relays are listened on after start, not passed to createMeshNode: a
    // relay that cannot be reached would make the node fail to start.
    // WebRTC's STUN servers are the coordinator's latest (iceServers).
    let iceServers: string[] | undefined
    node = await createMeshNode({
      privateKey,
      listen: init.listen ?? DEFAULT_LISTEN,
      webrtc: meshWebrtc(() => iceServers),
    })
    const first = await register(directAddrs(node))
    iceServers = first.iceServers
    let ticketKey: KeyObject = importTicketPublicKey(first.ticketPublicKey)
    log = log.child({ workspace_id: first.workspaceId })

    // Client peers whose tickets the coordinator revoked → until when (ms).
    const revoked = new Map<string, number>()
    const isRevokedPeer = (peer: string): boolean => (revoked.get(peer) ?? 0) > Date.now()
    const learnRevocations = (res: AgentRegisterResponse): void => {
      for (const { peerId: peer, expiresAt } of res.revokedPeers ?? []) {
        const until = Date.parse(expiresAt)
        if (Number.isFinite(until)) revoked.set(peer, until)
      }
      for (const [peer, until] of revoked) if (until <= Date.now()) revoked.delete(peer)
    }
    learnRevocations(first)

    const ssh = await createSshService({ dir: init.dir, log })
    closeSsh = () => ssh.close()
    // Every mesh protocol is served through `metered`, so stats count its traffic.
    const meter = new TrafficMeter()
    const metered = meteredNode(node, meter)
    await serveMeshProtocol(
      metered,
      SSH_PROTOCOL,
      {
        agentPeerId: peerId,
        publicKey: () => ticketKey,
        isRevoked: (claims) => isRevokedPeer(claims.client),
      },
      (duplex, context) => ssh.handle(duplex, context),
      log,
    )
    await serveMeshServices(
      metered,
      {
        agentPeerId: peerId,
        publicKey: () => ticketKey,
        isRevoked: (claims) => isRevokedPeer(claims.client),
      },
      log,
    )
    relays = new RelayKeeper(node, log)
    relays.setRelays(first.relays)
    await relays.ensure()
    const meshNode = node
    const keeper = relays

    let intervalMs = heartbeatMs(first.heartbeatSeconds)
    const apply = (res: AgentRegisterResponse): void => {
      try {
        ticketKey = importTicketPublicKey(res.ticketPublicKey)
      } catch (err) {
        log.error({ err: (err as Error).message }, 'the coordinator sent an unusable ticket key')
      }
      keeper.setRelays(res.relays)
      iceServers = res.iceServers ?? iceServers
      intervalMs = heartbeatMs(res.heartbeatSeconds)
      // A revoked peer loses its open connections too, not just new streams.
      learnRevocations(res)
      for (const connection of meshNode.getConnections()) {
        const remote = connection.remotePeer.toString()
        if (!isRevokedPeer(remote)) continue
        log.info({ client_peer_id: remote }, 'closing a connection whose tickets were revoked')
        connection.abort(new Error('tickets revoked by the coordinator'))
      }
    }
    apply(await register(directAddrs(meshNode)))
    log.info(
      { addrs: directAddrs(meshNode), relays: first.relays.length, workspace: first.workspaceName },
      'agent registered and serving',
    )
    const services = startWorkspaceServices({ api, dir: init.dir, node: meshNode, meter, log })

    // Heartbeat: register again every period (refreshing addresses, the
    // ticket key and the relay list); after a failure, sooner, with backoff.
    const heartbeat = async (): Promise<void> => {
      let failures = 0
      for (;;) {
        const wait = failures === 0 ? intervalMs : Math.min(backoffDelay(failures - 1), intervalMs)
        try {
          await sleep(wait, undefined, { signal })
        } catch {
          return
        }
        // In the background: an unreachable relay must not delay the heartbeat.
        void keeper.ensure()
        try {
          const body = { peerId, addrs: directAddrs(meshNode), version: AGENT_VERSION }
          apply(await api.registerAgent(body, { signal }))
          if (failures > 0) log.info('registered with the coordinator again')
          failures = 0
        } catch (err) {
          if (signal.aborted) return
          failures++
          if (isFatalRegisterError(err)) {
            // A refused token is the coordinator's definite word that this
            // agent was replaced or its workspace is gone (an outage is not:
            // then tickets already issued keep working offline). A retired
            // agent left running would retry forever and keep serving.
            log.error(
              { err: describeRegisterError(err) },
              'the coordinator refused the agent token; the agent is retired',
            )
            init.onRetired?.(err)
            return
          } else {
            log.warn({ err: describeRegisterError(err) }, 'heartbeat failed')
          }
        }
      }
    }
    const heartbeatDone = heartbeat()

    let stopping: Promise<void> | undefined
    return {
      peerId,
      stop() {
        stopping ??= (async () => {
          init.signal?.removeEventListener('abort', abort)
          await services.stop()
          controller.abort()
          keeper.stop()
          await heartbeatDone
          await ssh.close()
          await meshNode.stop()
          log.info('agent stopped')
        })()
        return stopping
      },
    }
  } catch (err) {
    init.signal?.removeEventListener('abort', abort)
    controller.abort()
    relays?.stop()
    if (closeSsh !== undefined) await closeSsh().catch(() => undefined)
    if (node !== undefined) await Promise.resolve(node.stop()).catch(() => undefined)
    throw err
  }
}

/**
 * `coder-mesh agent`: reads CODER_MESH_URL and CODER_MESH_AGENT_TOKEN (and
 * CODER_MESH_AGENT_DIR), runs the agent until SIGTERM or SIGINT, then stops
 * it and resolves. Rejects with MESH_BAD_ARGUMENT when the environment is
 * incomplete, and with the coordinator's error when it refuses the token.
 */
export async function runAgentCommand(): Promise<void> {
  const url = envUrl()
  const token = envAgentToken()
  if (url === undefined) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `${ENV_URL} is not set: the agent needs the coordinator's URL.`,
    )
  }
  try {
    new URL(url)
  } catch {
    throw new MeshError('MESH_BAD_ARGUMENT', `${ENV_URL} is not a URL: ${JSON.stringify(url)}.`)
  }
  if (token === undefined) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `${ENV_AGENT_TOKEN} is not set: the agent needs its token.`,
    )
  }

  const log = createLogger('mesh:agent')
  const controller = new AbortController()
  let retired: unknown
  const onSignal = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'stopping the agent')
    controller.abort()
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
  try {
    let agent: RunningAgent
    try {
      agent = await startAgent({
        url,
        token,
        dir: agentDir(),
        log,
        signal: controller.signal,
        onRetired: (err) => {
          retired = err
          controller.abort()
        },
      })
    } catch (err) {
      if (controller.signal.aborted) return
      if (isFatalRegisterError(err)) {
        log.error({ err: describeRegisterError(err) }, 'the coordinator refused the agent token')
      }
      throw err
    }
    if (!controller.signal.aborted) await once(controller.signal, 'abort')
    await agent.stop()
    if (retired !== undefined) throw retired
  } finally {
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
  }
}
