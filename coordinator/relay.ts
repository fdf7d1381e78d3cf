/**
 * The coordinator's libp2p node and who may use it as a relay. Only peers
 * that registered as a workspace agent get a reservation, and a circuit to
 * an agent opens only for a client holding an unexpired grant for it (one
 * is recorded for every ticket /connect issues). Everyone else gets
 * neither, so the relay carries no traffic for strangers.
 */
import type { ConnectionGater, PeerId, PrivateKey } from '@libp2p/interface'
import type { Logger } from '../sdk/logger.ts'
import { decodePeerKey, encodePeerKey, newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import {
  exportTicketPrivateKey,
  importTicketPrivateKey,
  newTicketKeyPair,
  type TicketKeyPair,
} from '../netstack/ticket.ts'
import { MAX_RELAY_RESERVATIONS } from './constants.ts'
import type { Store } from './store.ts'

export interface RelayPolicy {
  /** Lets `peerId` hold a reservation as the agent of `workspaceId`. */
  registerAgent(workspaceId: string, peerId: string): void
  /** Withdraws the workspace's agent; its peer keeps access while another workspace names it. */
  forgetAgent(workspaceId: string): void
  isAgent(peerId: string): boolean
  /** Lets `client` open circuits to `agent` until `expiresAt` (ms since the epoch). */
  grant(client: string, agent: string, expiresAt: number): void
  isGranted(client: string, agent: string): boolean
  /** Drops every grant of `client` (its user's tickets were revoked). */
  revokeClient(client: string): void
  /** Unexpired grants, for metrics. */
  grantCount(): number
  /** Drops expired grants. */
  sweep(): void
}

export interface RelayPolicyInit {
  now?: () => number
}

export function createRelayPolicy(init: RelayPolicyInit = {}): RelayPolicy {
  const now = init.now ?? Date.now
  const agentOf = new Map<string, string>() // workspace id → agent peer id
  const agentRefs = new Map<string, number>() // agent peer id → workspaces naming it
  const grants = new Map<string, Map<string, number>>() // client → agent → expiry

  const release = (peerId: string): void => {
    const refs = (agentRefs.get(peerId) ?? 1) - 1
    if (refs <= 0) agentRefs.delete(peerId)
    else agentRefs.set(peerId, refs)
  }

  const policy: RelayPolicy = {
    registerAgent(workspaceId, peerId) {
      if (agentOf.get(workspaceId) === peerId) return
      policy.forgetAgent(workspaceId)
      agentOf.set(workspaceId, peerId)
      agentRefs.set(peerId, (agentRefs.get(peerId) ?? 0) + 1)
    },

    forgetAgent(workspaceId) {
      const peerId = agentOf.get(workspaceId)
      if (peerId === undefined) return
      agentOf.delete(workspaceId)
      release(peerId)
    },

    isAgent: (peerId) => agentRefs.has(peerId),

    grant(client, agent, expiresAt) {
      let byAgent = grants.get(client)
      if (byAgent === undefined) grants.set(client, (byAgent = new Map()))
      byAgent.set(agent, Math.max(expiresAt, byAgent.get(agent) ?? 0))
    },

    isGranted(client, agent) {
      const expiresAt = grants.get(client)?.get(agent)
      return expiresAt !== undefined && expiresAt > now()
    },

    revokeClient(client) {
      grants.delete(client)
    },

    grantCount() {
      const t = now()
      let count = 0
      for (const byAgent of grants.values()) {
        for (const expiresAt of byAgent.values()) if (expiresAt > t) count++
      }
      return count
    },

    sweep() {
      const t = now()
      for (const [client, byAgent] of grants) {
        for (const [agent, expiresAt] of byAgent) if (expiresAt <= t) byAgent.delete(agent)
        if (byAgent.size === 0) grants.delete(client)
      }
    },
  }
  return policy
}

/** The relay half of the connection gater; every other check is left to libp2p's defaults. */
export function createRelayGater(policy: RelayPolicy): ConnectionGater {
  return {
    denyInboundRelayReservation: (source: PeerId) => !policy.isAgent(source.toString()),
    denyOutboundRelayedConnection: (source: PeerId, destination: PeerId) =>
      !policy.isGranted(source.toString(), destination.toString()),
  }
}

export interface CoordinatorKeys {
  /** The relay node's libp2p identity. */
  peerKey: PrivateKey
  ticket: TicketKeyPair
}

/** The coordinator's keys from the store, generated and kept on first start. */
export async function loadOrCreateKeys(store: Store): Promise<CoordinatorKeys> {
  const existing = await store.keys.get('keys')
  if (existing !== undefined) {
    return {
      peerKey: decodePeerKey(existing.relayKey),
      ticket: importTicketPrivateKey(existing.ticketKey),
    }
  }

  const peerKey = await newPeerKey()
  const ticket = newTicketKeyPair()
  const record = {
    relayKey: encodePeerKey(peerKey),
    ticketKey: exportTicketPrivateKey(ticket.privateKey),
  }
  await store.keys.put('keys', record, { sync: true })
  return { peerKey, ticket }
}

export interface RelayNodeInit {
  peerKey: PrivateKey
  listen: string[]
  policy: RelayPolicy
  log: Logger
}

export async function startRelayNode(init: RelayNodeInit): Promise<MeshNode> {
  const node = await createMeshNode({
    privateKey: init.peerKey,
    listen: init.listen,
    relayServer: { maxReservations: MAX_RELAY_RESERVATIONS },
    connectionGater: createRelayGater(init.policy),
  })
  init.log.info({ peer_id: node.peerId.toString(), addrs: relayAddrs(node) }, 'relay listening')
  return node
}

/**
 * Addresses clients and agents can use to reach the relay, each ending in
 * /p2p/<relay>. Wildcard listen addresses are left out (libp2p also lists
 * the interface addresses they expand to), and so are circuit addresses.
 */
export function relayAddrs(node: MeshNode): string[] {
  const self = `/p2p/${node.peerId.toString()}`
  return node
    .getMultiaddrs()
    .map((ma) => ma.toString())
    .filter((a) => !a.includes('/p2p-circuit'))
    .filter((a) => !a.startsWith('/ip4/0.0.0.0/') && !a.startsWith('/ip6/::/'))
    .map((a) => (a.endsWith(self) ? a : a + self))
}

/** The circuit relay v2 stop protocol: one open stream per relayed connection. */
const RELAY_STOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/stop'

/** Reservations held and circuits open on the relay node, for metrics. */
export function relayUsage(node: MeshNode): { reservations: number; circuits: number } {
  const relay = node.services.relay as { reservations?: { size: number } } | undefined
  let circuits = 0
  for (const connection of node.getConnections()) {
    for (const stream of connection.streams) {
      if (stream.protocol === RELAY_STOP_PROTOCOL && stream.status === 'open') circuits++
    }
  }
  return { reservations: relay?.reservations?.size ?? 0, circuits }
}
