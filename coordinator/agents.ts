/**
 * Agents and tickets. An agent registers (and keeps registering, as its
 * heartbeat) with the token its start build issued; that makes its peer id
 * known to the relay. A client asks /connect for a ticket to a running
 * workspace's agent; the ticket is bound to the client's peer id and the
 * relay remembers the grant.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { KeyObject } from 'node:crypto'
import type {
  AgentRegisterRequest,
  AgentRegisterResponse,
  ConnectResponse,
} from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { exportTicketPublicKey, signTicket, type TicketKeyPair } from '../netstack/ticket.ts'
import { workspaceLock } from './builds.ts'
import { HEARTBEAT_SECONDS, TICKET_TTL } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { UserRecord } from './records.ts'
import type { RelayPolicy } from './relay.ts'
import { AGENT_TOKEN_PREFIX, hashToken } from './secrets.ts'
import type { Store } from './store.ts'
import type { Workspaces } from './workspaces.ts'

export interface AgentsComponents {
  store: Store
  locks: KeyedLock
  workspaces: Workspaces
  relay: RelayPolicy
  ticketKey: TicketKeyPair
  /** The relay node's addresses, each ending in /p2p/<relay>. */
  relayAddrs: () => string[]
  log: Logger
  now?: () => number
}

export interface Agents {
  /** Records the agent of the workspace `agentToken` belongs to; MESH_UNAUTHENTICATED otherwise. */
  register(agentToken: string, request: AgentRegisterRequest): Promise<AgentRegisterResponse>
  /** Issues a ticket from `clientPeerId` to the agent of the owner's running workspace. */
  connect(owner: UserRecord, name: string, clientPeerId: string): Promise<ConnectResponse>
}

function badAgentToken(detail: string): MeshError {
  return new MeshError(
    'MESH_UNAUTHENTICATED',
    'The agent token is not valid; the workspace may have been rebuilt or stopped.',
    { detail },
  )
}

/** Throws a 400 unless `value` parses as a libp2p peer id. */
export function assertPeerId(value: string): void {
  try {
    peerIdFromString(value)
  } catch (err) {
    throw new MeshError('MESH_VALIDATION', `${JSON.stringify(value)} is not a libp2p peer id.`, {
      detail: (err as Error).message,
      validations: [{ field: 'peerId', detail: 'is not a libp2p peer id' }],
    })
  }
}

export function createAgents(components: AgentsComponents): Agents {
  const { store, locks, workspaces, relay } = components
  const log = components.log.child({ component: 'agents' })
  const now = components.now ?? Date.now
  const ticketPublicKey = exportTicketPublicKey(components.ticketKey.publicKey)
  const privateKey: KeyObject = components.ticketKey.privateKey

  return {
    async register(agentToken, request) {
      if (!agentToken.startsWith(AGENT_TOKEN_PREFIX)) throw badAgentToken('not an agent token')
      assertPeerId(request.peerId)

      const hash = hashToken(agentToken)
      const workspaceId = await store.agentTokens.get(hash)
      if (workspaceId === undefined) throw badAgentToken('unknown agent token')

      const { ws, changed } = await locks.run(workspaceLock(workspaceId), async () => {
        const ws = await store.workspaces.get(workspaceId)
        if (ws === undefined || ws.agentTokenHash !== hash)
          throw badAgentToken('token was replaced')
        const changed = ws.agent?.peerId !== request.peerId
        const agent = {
          peerId: request.peerId,
          addrs: request.addrs,
          version: request.version,
          lastSeenAt: new Date(now()).toISOString(),
        }
        // A first registration must survive a crash; heartbeats need not.
        await store.workspaces.put(ws.id, { ...ws, agent }, { sync: changed })
        relay.registerAgent(ws.id, request.peerId)
        return { ws, changed }
      })

      const fields = { workspace_id: ws.id, peer_id: request.peerId, version: request.version }
      if (changed) log.info(fields, 'agent registered')
      else log.debug(fields, 'agent heartbeat')

      const owner = await store.users.get(ws.ownerId)
      return {
        workspaceId: ws.id,
        workspaceName: ws.name,
        owner: owner?.username ?? '',
        ticketPublicKey,
        relays: components.relayAddrs(),
        heartbeatSeconds: HEARTBEAT_SECONDS,
      }
    },

    async connect(owner, name, clientPeerId) {
      assertPeerId(clientPeerId)
      const ws = await workspaces.record(owner, name)
      const status = await workspaces.status(ws)
      if (status !== 'running') {
        throw new MeshError(
          'MESH_WORKSPACE_NOT_RUNNING',
          `Workspace ${JSON.stringify(name)} is ${status}, not running; start it first.`,
        )
      }
      if (ws.agent === undefined) {
        throw new MeshError(
          'MESH_AGENT_NOT_CONNECTED',
          `The agent of workspace ${JSON.stringify(name)} has not connected yet.`,
        )
      }

      const exp = now() + TICKET_TTL
      const ticket = signTicket(
        {
          v: 1,
          client: clientPeerId,
          agent: ws.agent.peerId,
          workspace: ws.id,
          user: owner.id,
          exp,
        },
        privateKey,
      )
      relay.grant(clientPeerId, ws.agent.peerId, exp)
      log.info({ workspace_id: ws.id, user_id: owner.id, peer_id: clientPeerId }, 'ticket issued')

      return {
        workspaceId: ws.id,
        agent: { peerId: ws.agent.peerId, addrs: ws.agent.addrs },
        relays: components.relayAddrs(),
        ticket,
        expiresAt: new Date(exp).toISOString(),
      }
    },
  }
}
