/**
 * Wires the coordinator's services together: the store, users, tokens, the
 * audit log, templates, workspaces, the build queue, the relay node, agents
 * and metrics. The HTTP layer (api.ts) is a thin shell over the object this
 * returns.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { resolve } from 'node:path'
import { createLogger, type Logger } from '../sdk/logger.ts'
import type { MeshNode } from '../netstack/node.ts'
import type { TicketKeyPair } from '../netstack/ticket.ts'
import { createAgents, type Agents } from './agents.ts'
import { openAudit, type Audit } from './audit.ts'
import { createLogHub, type LogHub } from './build-logs.ts'
import { agentCommandFor, createBuilds, type ProvisionFn } from './builds.ts'
import {
  DEFAULT_BUILD_GRACE,
  DEFAULT_P2P_LISTEN,
  DEFAULT_STUN_ADDRESS,
  GRANT_SWEEP_INTERVAL,
} from './constants.ts'
import { KeyedLock } from './lock.ts'
import { createLoginLimits, type LoginLimitsInit } from './login-limits.ts'
import { createMetrics, type Metrics } from './metrics.ts'
import {
  createRelayPolicy,
  loadOrCreateKeys,
  relayAddrs,
  relayUsage,
  relayWebSocketAddrs,
  startCoordinatorStun,
  startRelayNode,
  type CoordinatorStun,
  type RelayPolicy,
} from './relay.ts'
import { openStore, type Store } from './store.ts'
import { createTemplates, type Templates } from './templates.ts'
import { createApiTokens, type ApiTokens } from './tokens.ts'
import { createUserAdmin, type UserAdmin } from './user-admin.ts'
import { createUsers, type Users } from './users.ts'
import { createWorkspaces, type Workspaces } from './workspaces.ts'
import { CODER_MESH_BIN } from '../sdk/paths.ts'

export interface CoordinatorInit {
  dataDir: string
  /** The URL users and agents reach this coordinator at. */
  accessUrl: string
  /** libp2p listen addresses of the relay; default ['/ip4/0.0.0.0/tcp/0']. */
  p2pListen?: string[]
  /** UDP `IPV4:PORT` of the STUN responder, or false for none; default DEFAULT_STUN_ADDRESS. */
  stunAddress?: string | false
  log?: Logger
  /** Runs one build; default: the in-process provisioner. */
  provision?: ProvisionFn
  /** Builds running at once; default 2. */
  maxConcurrentBuilds?: number
  /** How long close() waits for running builds before canceling them, in ms; default 30 s. */
  buildGrace?: number
  /** How often agents register again, in seconds; default 15. Tests shorten it. */
  heartbeatSeconds?: number
  /** Login throttling and lockout; defaults in constants.ts. */
  loginLimits?: LoginLimitsInit
  /** Current time in ms; Date.now unless a test sets a clock. */
  now?: () => number
}

export interface Coordinator {
  readonly dataDir: string
  readonly accessUrl: string
  readonly log: Logger
  readonly store: Store
  readonly users: Users
  readonly userAdmin: UserAdmin
  readonly tokens: ApiTokens
  readonly audit: Audit
  readonly metrics: Metrics
  readonly templates: Templates
  readonly workspaces: Workspaces
  readonly agents: Agents
  readonly hub: LogHub
  readonly relay: RelayPolicy
  readonly node: MeshNode
  readonly ticketKey: TicketKeyPair
  relayAddrs(): string[]
  /** STUN URLs agents and clients use for WebRTC (empty when STUN is off). */
  iceServers(): string[]
  /** Why the coordinator cannot take work (store closed, relay stopped, closing), or undefined. */
  notReady(): string | undefined
  /** Finishes or cancels builds, stops the relay and closes the store. Idempotent. */
  close(): Promise<void>
}

/** `<package>/bin/coder-mesh`, the CLI that templates start the agent with. */
export { CODER_MESH_BIN }

const defaultProvision: ProvisionFn = async (job, options) => {
  // Loaded on the first build: the server starts without it.
  const { provision } = await import('../provisioner/index.ts')
  return provision(job, options)
}

export async function openCoordinator(init: CoordinatorInit): Promise<Coordinator> {
  const dataDir = resolve(init.dataDir)
  const log = init.log ?? createLogger('mesh:coordinator')
  const locks = new KeyedLock()
  const store = await openStore(dataDir)

  let node: MeshNode | undefined
  let stun: CoordinatorStun | undefined
  try {
    const keys = await loadOrCreateKeys(store)
    const relay = createRelayPolicy()
    const hub = createLogHub()
    const now = init.now
    const metrics = createMetrics()
    const tokens = createApiTokens({ store, locks, log, now })
    const limits = createLoginLimits(init.loginLimits, now)
    const users = createUsers({ store, locks, log, tokens, limits, now })
    const audit = await openAudit({ store, log, now })
    // Agents exist only once the relay runs; suspensions before that have no tickets to revoke.
    const late: { agents?: Agents } = {}
    const userAdmin = createUserAdmin({
      store,
      locks,
      log,
      users,
      tokens,
      now,
      revokeTickets: async (userId) => late.agents?.revokeUser(userId),
    })
    const templates = createTemplates({ store, locks, log })
    const builds = createBuilds({
      store,
      locks,
      hub,
      templates,
      relay,
      log,
      provision: init.provision ?? defaultProvision,
      dataDir,
      accessUrl: init.accessUrl,
      agentCommand: agentCommandFor(CODER_MESH_BIN),
      maxConcurrent: init.maxConcurrentBuilds,
      onFinished: (build) => metrics.buildFinished(build.transition, build.status),
    })
    const workspaces = createWorkspaces({ store, locks, templates, builds, log, now })

    await builds.recover()
    await users.sweepSessions()
    for await (const ws of store.workspaces.values()) {
      if (ws.agent !== undefined) relay.registerAgent(ws.id, ws.agent.peerId)
    }

    const relayNode = await startRelayNode({
      peerKey: keys.peerKey,
      listen: init.p2pListen ?? DEFAULT_P2P_LISTEN,
      policy: relay,
      log,
    })
    node = relayNode
    const addrs = (): string[] => relayAddrs(relayNode)
    const coordinatorStun = await startCoordinatorStun(
      init.stunAddress ?? DEFAULT_STUN_ADDRESS,
      init.accessUrl,
      log,
    )
    stun = coordinatorStun
    const liveAgents = createAgents({
      store,
      locks,
      workspaces,
      relay,
      ticketKey: keys.ticket,
      relayAddrs: addrs,
      relayWebSocketAddrs: () => relayWebSocketAddrs(relayNode),
      iceServers: () => coordinatorStun.iceServers(),
      hangUp: (peerId) => relayNode.hangUp(peerIdFromString(peerId)),
      log,
      heartbeatSeconds: init.heartbeatSeconds,
      now,
    })
    late.agents = liveAgents
    metrics.setSources({
      builds: () => builds.stats(),
      agentsConnected: () => liveAgents.connectedCount(),
      relay: () => ({ ...relayUsage(relayNode), grants: relay.grantCount() }),
    })
    const sweeper = setInterval(() => {
      relay.sweep()
      liveAgents.sweep().catch((err: unknown) => log.warn({ err }, 'sweep tickets'))
    }, GRANT_SWEEP_INTERVAL)
    sweeper.unref()

    let closing: Promise<void> | undefined
    const notReady = (): string | undefined => {
      if (closing !== undefined) return 'shutting down'
      if (!store.isOpen()) return 'the store is not open'
      if (relayNode.status !== 'started') return `the relay is ${relayNode.status}`
      return undefined
    }
    const close = async (): Promise<void> => {
      clearInterval(sweeper)
      await builds.close(init.buildGrace ?? DEFAULT_BUILD_GRACE)
      hub.close()
      await relayNode.stop()
      await coordinatorStun.close()
      await store.close()
      log.info('coordinator closed')
    }

    return {
      dataDir,
      accessUrl: init.accessUrl,
      log,
      store,
      users,
      userAdmin,
      tokens,
      audit,
      metrics,
      templates,
      workspaces,
      agents: liveAgents,
      hub,
      relay,
      node: relayNode,
      ticketKey: keys.ticket,
      relayAddrs: addrs,
      iceServers: () => coordinatorStun.iceServers(),
      notReady,
      close: () => (closing ??= close()),
    }
  } catch (err) {
    await node?.stop()
    await stun?.close()
    await store.close()
    throw err
  }
}
