/**
 * Agents and tickets. An agent registers (and keeps registering, as its
 * heartbeat) with the token its start build issued; that makes its peer id
 * known to the relay. A client asks /connect for a ticket to a running
 * workspace's agent; the ticket is bound to the client's peer id and the
 * relay remembers the grant.
 *
 * Every issued ticket is recorded until it expires, so that suspending or
 * deleting its user can revoke it: the relay forgets the grant and hangs
 * up on the client, and the workspace's agent learns the client's peer id
 * in its next heartbeat answer (`revokedPeers`), refuses its streams and
 * closes its connections.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { randomUUID, type KeyObject } from 'node:crypto'
import type { StreamingApi } from 'hono/utils/stream'
import type {
  AgentLogsRequest,
  AgentRegisterRequest,
  AgentRegisterResponse,
  AgentReportRequest,
  AgentStartupResponse,
  ConnectResponse,
  RevokedPeer,
} from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { exportTicketPublicKey, signTicket, type TicketKeyPair } from '../netstack/ticket.ts'
import { startupOutputs } from '../provisioner/outputs.ts'
import { createAgentLogs } from './agent-logs.ts'
import { workspaceLock } from './builds.ts'
import { SECOND } from '../sdk/config.ts'
import { AGENT_CONNECTED_WINDOW, HEARTBEAT_SECONDS, TICKET_TTL } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { AgentReportRecord, RevocationRecord, UserRecord, WorkspaceRecord } from './records.ts'
import type { RelayPolicy } from './relay.ts'
import { AGENT_TOKEN_PREFIX, hashToken } from './secrets.ts'
import type { Store } from './store.ts'
import { agentSaidOff, type Workspaces } from './workspaces.ts'

export interface AgentsComponents {
  store: Store
  locks: KeyedLock
  workspaces: Workspaces
  relay: RelayPolicy
  ticketKey: TicketKeyPair
  /** The relay node's addresses, each ending in /p2p/<relay>. */
  relayAddrs: () => string[]
  /** The relay's WebSockets addresses, for browser clients; default none. */
  relayWebSocketAddrs?: () => string[]
  /** STUN URLs for WebRTC, handed to agents and clients; default none. */
  iceServers?: () => string[]
  /** Closes the relay's connections to a peer; best effort. */
  hangUp?: (peerId: string) => Promise<void>
  log: Logger
  /** How often agents register again, in seconds; default 15. */
  heartbeatSeconds?: number
  now?: () => number
}

export interface Agents {
  /** Records the agent of the workspace `agentToken` belongs to; MESH_UNAUTHENTICATED otherwise. */
  register(agentToken: string, request: AgentRegisterRequest): Promise<AgentRegisterResponse>
  /**
   * Issues `actor` a ticket from `clientPeerId` to the agent of `owner`'s
   * running workspace `name` (the route has checked that actor may).
   */
  connect(
    actor: UserRecord,
    owner: UserRecord,
    name: string,
    clientPeerId: string,
  ): Promise<ConnectResponse>
  /** Revokes every unexpired ticket issued to the user. */
  revokeUser(userId: string): Promise<void>
  /**
   * The startup script of the agent's start build, once that build has
   * succeeded (its outputs are known then); `ready: false` before.
   */
  startup(agentToken: string): Promise<AgentStartupResponse>
  /** Keeps the agent's latest lifecycle state, stats and listening ports. */
  report(agentToken: string, request: AgentReportRequest): Promise<void>
  /** Stores lines of the agent's log. */
  appendLogs(agentToken: string, request: AgentLogsRequest): Promise<{ stored: number }>
  /** Writes `owner`'s workspace `name`'s agent log as NDJSON; following, until the client goes. */
  streamLogs(out: StreamingApi, workspace: WorkspaceRecord, follow: boolean): Promise<void>
  /** Agents that registered within the last heartbeat window. */
  connectedCount(): number
  /** Deletes expired tickets and revocations, and gone workspaces' agent reports and logs. */
  sweep(): Promise<void>
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

/** A duration for a sentence: "40 seconds ago", "3 minutes ago", "2 hours ago", "5 days ago". */
function ago(ms: number): string {
  const units: [string, number][] = [
    ['day', 86_400_000],
    ['hour', 3_600_000],
    ['minute', 60_000],
  ]
  for (const [unit, size] of units) {
    const n = Math.floor(ms / size)
    if (n >= 1) return `${n} ${unit}${n === 1 ? '' : 's'} ago`
  }
  const seconds = Math.max(0, Math.floor(ms / SECOND))
  return `${seconds} second${seconds === 1 ? '' : 's'} ago`
}

export function createAgents(components: AgentsComponents): Agents {
  const { store, locks, workspaces, relay } = components
  const log = components.log.child({ component: 'agents' })
  const now = components.now ?? Date.now
  const heartbeatSeconds = components.heartbeatSeconds ?? HEARTBEAT_SECONDS
  /** workspace id → when its agent last registered, ms. */
  const lastSeen = new Map<string, number>()
  const ticketPublicKey = exportTicketPublicKey(components.ticketKey.publicKey)
  const privateKey: KeyObject = components.ticketKey.privateKey

  const agentLogs = createAgentLogs(store, locks)

  /** The workspace whose current agent token this is; MESH_UNAUTHENTICATED otherwise. */
  async function agentWorkspace(agentToken: string): Promise<WorkspaceRecord> {
    if (!agentToken.startsWith(AGENT_TOKEN_PREFIX)) throw badAgentToken('not an agent token')
    const hash = hashToken(agentToken)
    const workspaceId = await store.agentTokens.get(hash)
    if (workspaceId === undefined) throw badAgentToken('unknown agent token')
    const ws = await store.workspaces.get(workspaceId)
    if (ws === undefined || ws.agentTokenHash !== hash) throw badAgentToken('token was replaced')
    return ws
  }

  async function revokedPeers(workspaceId: string): Promise<RevokedPeer[]> {
    const out: RevokedPeer[] = []
    for await (const [key, r] of store.revocations.entries({
      prefix: `${workspaceId}/`,
    })) {
      if (r.expiresAt <= now()) continue
      out.push({
        peerId: key.slice(workspaceId.length + 1),
        expiresAt: new Date(r.expiresAt).toISOString(),
      })
    }
    return out
  }

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
        lastSeen.set(ws.id, now())
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
        iceServers: components.iceServers?.() ?? [],
        heartbeatSeconds,
        revokedPeers: await revokedPeers(ws.id),
      }
    },

    async connect(actor, owner, name, clientPeerId) {
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
      if (agentSaidOff(ws, await store.agentReports.get(ws.id))) {
        throw new MeshError(
          'MESH_AGENT_NOT_CONNECTED',
          `The agent of workspace ${JSON.stringify(name)} has stopped. Restart the ` +
            `workspace with 'coder-mesh restart ${name}'.`,
          { detail: 'its last report was lifecycle off' },
        )
      }
      // The same window the workspace's `agent.connected` reports.
      const silentFor = now() - Date.parse(ws.agent.lastSeenAt)
      if (!(silentFor < AGENT_CONNECTED_WINDOW)) {
        throw new MeshError(
          'MESH_AGENT_NOT_CONNECTED',
          `The agent of workspace ${JSON.stringify(name)} is not connected: it was last seen ` +
            `${ago(silentFor)}, at ${ws.agent.lastSeenAt}. It may have stopped or lost its ` +
            `network; restart the workspace with 'coder-mesh restart ${name}'.`,
          { detail: `no heartbeat within ${AGENT_CONNECTED_WINDOW / SECOND} s` },
        )
      }

      const exp = now() + TICKET_TTL
      const ticket = signTicket(
        {
          v: 1,
          client: clientPeerId,
          agent: ws.agent.peerId,
          workspace: ws.id,
          user: actor.id,
          exp,
        },
        privateKey,
      )
      // Recorded before it is handed out, so a revocation cannot miss it.
      const record = {
        workspaceId: ws.id,
        client: clientPeerId,
        agent: ws.agent.peerId,
        expiresAt: exp,
      }
      await store.tickets.put(`${actor.id}/${randomUUID()}`, record, { sync: true })
      relay.grant(clientPeerId, ws.agent.peerId, exp)
      log.info({ workspace_id: ws.id, user_id: actor.id, peer_id: clientPeerId }, 'ticket issued')

      return {
        workspaceId: ws.id,
        agent: { peerId: ws.agent.peerId, addrs: ws.agent.addrs },
        relays: components.relayAddrs(),
        webSocketRelays: components.relayWebSocketAddrs?.() ?? [],
        iceServers: components.iceServers?.() ?? [],
        ticket,
        expiresAt: new Date(exp).toISOString(),
      }
    },

    async revokeUser(userId) {
      const t = now()
      const revoked = new Map<string, RevocationRecord>()
      const batch = store.batch()
      for await (const [key, ticket] of store.tickets.entries({ prefix: `${userId}/` })) {
        batch.del(store.tickets, key)
        if (ticket.expiresAt <= t) continue
        const revocationKey = `${ticket.workspaceId}/${ticket.client}`
        const previous = revoked.get(revocationKey) ?? (await store.revocations.get(revocationKey))
        const expiresAt = Math.max(ticket.expiresAt, previous?.expiresAt ?? 0)
        revoked.set(revocationKey, { userId, expiresAt })
        batch.put(store.revocations, revocationKey, { userId, expiresAt })
      }
      await batch.write({ sync: true })

      const clients = new Set([...revoked.keys()].map((key) => key.slice(key.indexOf('/') + 1)))
      for (const client of clients) {
        relay.revokeClient(client)
        await components
          .hangUp?.(client)
          .catch((err: unknown) =>
            log.warn({ err, peer_id: client }, 'hang up on a revoked client'),
          )
      }
      if (clients.size > 0) log.info({ user_id: userId, peers: clients.size }, 'tickets revoked')
    },

    async startup(agentToken) {
      const ws = await agentWorkspace(agentToken)
      // The token was issued by the latest build, a start; a later build
      // replaces or retires it. Its outputs are known once it succeeded.
      const build = await store.builds.get(ws.latestBuildId)
      if (build?.transition !== 'start' || build.status !== 'succeeded') return { ready: false }
      const state = await store.states.get(ws.id)
      const outputs = startupOutputs(state === undefined ? undefined : Buffer.from(state, 'base64'))
      const response: AgentStartupResponse = {
        ready: true,
        buildId: build.id,
        script: outputs.script,
      }
      if (outputs.timeoutSeconds !== undefined) response.timeoutSeconds = outputs.timeoutSeconds
      if (outputs.problems.length > 0) response.problems = outputs.problems
      return response
    },

    async report(agentToken, request) {
      const ws = await agentWorkspace(agentToken)
      const previous = await store.agentReports.get(ws.id)
      const record: AgentReportRecord = {
        agentTokenHash: ws.agentTokenHash!,
        lifecycle: request.lifecycle,
        updatedAt: new Date(now()).toISOString(),
      }
      if (request.startError !== undefined) record.startError = request.startError
      // Stats and ports come every few seconds; a lifecycle change alone keeps the last ones.
      const same = previous?.agentTokenHash === record.agentTokenHash
      const stats = request.stats ?? (same ? previous?.stats : undefined)
      const ports = request.ports ?? (same ? previous?.ports : undefined)
      if (stats !== undefined) record.stats = stats
      if (ports !== undefined) record.ports = ports
      // Only the latest is kept; losing one to a crash costs one report interval.
      await store.agentReports.put(ws.id, record)
      if (!same || previous?.lifecycle !== request.lifecycle) {
        log.info(
          { workspace_id: ws.id, lifecycle: request.lifecycle, start_error: request.startError },
          'agent lifecycle',
        )
      }
    },

    async appendLogs(agentToken, request) {
      const ws = await agentWorkspace(agentToken)
      const build = await store.builds.get(request.buildId)
      if (build?.workspaceId !== ws.id || build.transition !== 'start') {
        throw new MeshError(
          'MESH_VALIDATION',
          `Build ${JSON.stringify(request.buildId)} is no start build of this workspace.`,
          { validations: [{ field: 'buildId', detail: 'is no start build of this workspace' }] },
        )
      }
      return agentLogs.append(ws.id, request)
    },

    async streamLogs(out, workspace, follow) {
      // A workspace started again shows its new start's lines only, none
      // until its agent sends some; a stopped one, its last start's.
      const latest = await store.builds.get(workspace.latestBuildId)
      const build = latest?.transition === 'start' ? latest.id : undefined
      return agentLogs.stream(out, workspace.id, follow, build)
    },

    connectedCount() {
      const window = 3 * heartbeatSeconds * SECOND
      let count = 0
      for (const [id, seen] of lastSeen) {
        if (now() - seen < window) count++
        else lastSeen.delete(id)
      }
      return count
    },

    async sweep() {
      const t = now()
      const batch = store.batch()
      for await (const [key, ticket] of store.tickets.entries()) {
        if (ticket.expiresAt <= t) batch.del(store.tickets, key)
      }
      for await (const [key, revocation] of store.revocations.entries()) {
        if (revocation.expiresAt <= t) batch.del(store.revocations, key)
      }
      for await (const key of store.agentReports.sub.keys()) {
        if ((await store.workspaces.get(key)) === undefined) batch.del(store.agentReports, key)
      }
      await batch.write()
      const exists = new Map<string, boolean>()
      for await (const key of store.agentLogs.sub.keys()) {
        const id = key.slice(0, key.indexOf('/'))
        if (!exists.has(id)) exists.set(id, (await store.workspaces.get(id)) !== undefined)
      }
      for (const [id, found] of exists) if (!found) await agentLogs.remove(id)
    },
  }
}
