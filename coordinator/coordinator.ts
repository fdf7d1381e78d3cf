/**
 * Wires the coordinator's services together: the store, users, templates,
 * workspaces, the build queue, the relay node and agents. The HTTP layer
 * (api.ts) is a thin shell over the object this returns.
 */
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createLogger, type Logger } from '../sdk/logger.ts'
import type { MeshNode } from '../netstack/node.ts'
import type { TicketKeyPair } from '../netstack/ticket.ts'
import { createAgents, type Agents } from './agents.ts'
import { createLogHub, type LogHub } from './build-logs.ts'
import { agentCommandFor, createBuilds, type ProvisionFn } from './builds.ts'
import { DEFAULT_BUILD_GRACE, DEFAULT_P2P_LISTEN, GRANT_SWEEP_INTERVAL } from './constants.ts'
import { KeyedLock } from './lock.ts'
import {
  createRelayPolicy,
  loadOrCreateKeys,
  relayAddrs,
  startRelayNode,
  type RelayPolicy,
} from './relay.ts'
import { openStore, type Store } from './store.ts'
import { createTemplates, type Templates } from './templates.ts'
import { createUsers, type Users } from './users.ts'
import { createWorkspaces, type Workspaces } from './workspaces.ts'

export interface CoordinatorInit {
  dataDir: string
  /** The URL users and agents reach this coordinator at. */
  accessUrl: string
  /** libp2p listen addresses of the relay; default ['/ip4/0.0.0.0/tcp/0']. */
  p2pListen?: string[]
  log?: Logger
  /** Runs one build; default: the in-process provisioner. Tests pass a stub. */
  provision?: ProvisionFn
  /** Builds running at once; default 2. */
  maxConcurrentBuilds?: number
  /** How long close() waits for running builds before canceling them, in ms; default 30 s. */
  buildGrace?: number
}

export interface Coordinator {
  readonly dataDir: string
  readonly accessUrl: string
  readonly log: Logger
  readonly store: Store
  readonly users: Users
  readonly templates: Templates
  readonly workspaces: Workspaces
  readonly agents: Agents
  readonly hub: LogHub
  readonly relay: RelayPolicy
  readonly node: MeshNode
  readonly ticketKey: TicketKeyPair
  relayAddrs(): string[]
  /** Finishes or cancels builds, stops the relay and closes the store. Idempotent. */
  close(): Promise<void>
}

/** `<package>/bin/coder-mesh`, the CLI that templates start the agent with. */
export const CODER_MESH_BIN = fileURLToPath(new URL('../bin/coder-mesh', import.meta.url))

const defaultProvision: ProvisionFn = async (job, options) => {
  // Loaded on the first build, so a coordinator that never builds (and
  // every test that stubs builds) does not load the provisioner.
  const { provision } = await import('../provisioner/index.ts')
  return provision(job, options)
}

export async function openCoordinator(init: CoordinatorInit): Promise<Coordinator> {
  const dataDir = resolve(init.dataDir)
  const log = init.log ?? createLogger('mesh:coordinator')
  const locks = new KeyedLock()
  const store = await openStore(dataDir)

  let node: MeshNode | undefined
  try {
    const keys = await loadOrCreateKeys(store)
    const relay = createRelayPolicy()
    const hub = createLogHub()
    const users = createUsers({ store, locks, log })
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
    })
    const workspaces = createWorkspaces({ store, locks, templates, builds, log })

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
    const agents = createAgents({
      store,
      locks,
      workspaces,
      relay,
      ticketKey: keys.ticket,
      relayAddrs: addrs,
      log,
    })
    const sweeper = setInterval(() => relay.sweep(), GRANT_SWEEP_INTERVAL)
    sweeper.unref()

    let closing: Promise<void> | undefined
    const close = async (): Promise<void> => {
      clearInterval(sweeper)
      await builds.close(init.buildGrace ?? DEFAULT_BUILD_GRACE)
      hub.close()
      await relayNode.stop()
      await store.close()
      log.info('coordinator closed')
    }

    return {
      dataDir,
      accessUrl: init.accessUrl,
      log,
      store,
      users,
      templates,
      workspaces,
      agents,
      hub,
      relay,
      node: relayNode,
      ticketKey: keys.ticket,
      relayAddrs: addrs,
      close: () => (closing ??= close()),
    }
  } catch (err) {
    await node?.stop()
    await store.close()
    throw err
  }
}
