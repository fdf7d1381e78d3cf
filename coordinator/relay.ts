/**
 * The coordinator's libp2p node and who may use it as a relay. Only peers
 * that registered as a workspace agent get a reservation, and a circuit to
 * an agent opens only for a client holding an unexpired grant for it (one
 * is recorded for every ticket /connect issues). Everyone else gets
 * neither, so the relay carries no traffic for strangers.
 *
 * The relay's piping is patched (patches/@libp2p+circuit-relay-v2+*.patch,
 * applied by patch-package at install): the stock server kept every byte a
 * dialing peer uploaded in memory while its circuit was open (PROBES trap
 * 1; 256 MiB up left 520 MiB live) and ignored backpressure. The fix sits
 * in createLimitedRelay, which the server calls internally and which no
 * option or wrapper can replace, hence a patch rather than our own code;
 * netstack/relay-memory.test.ts fails without it, and startRelayNode warns.
 */
import type { ConnectionGater, PeerId, PrivateKey, StreamHandlerRecord } from '@libp2p/interface'
import { readFile } from 'node:fs/promises'
import { isIPv4 } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Logger } from '../sdk/logger.ts'
import { DHT_PROTOCOL } from '../netstack/dht.ts'
import { decodePeerKey, encodePeerKey, newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import {
  exportTicketPrivateKey,
  importTicketPrivateKey,
  newTicketKeyPair,
  type TicketKeyPair,
} from '../netstack/ticket.ts'
import { startStunServer, type StunServer } from '../netstack/stun.ts'
import { MeshError } from '../sdk/errors.ts'
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
  /** Whether `client` holds an unexpired grant to any agent. */
  isClient(client: string): boolean
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

    isClient(client) {
      const t = now()
      for (const expiresAt of grants.get(client)?.values() ?? []) if (expiresAt > t) return true
      return false
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

/** Whether the installed circuit relay carries our piping patch (see the header). */
export async function relayPatchApplied(): Promise<boolean> {
  try {
    const index = fileURLToPath(import.meta.resolve('@libp2p/circuit-relay-v2'))
    return (await readFile(join(dirname(index), 'utils.js'), 'utf8')).includes('relayOneWay')
  } catch {
    return false
  }
}

export async function startRelayNode(init: RelayNodeInit): Promise<MeshNode> {
  if (!(await relayPatchApplied())) {
    init.log.warn(
      'the circuit relay is not patched (was npm run with --ignore-scripts?): relayed uploads ' +
        'stay in memory while their connection is open; run npx patch-package',
    )
  }
  const node = await createMeshNode({
    privateKey: init.peerKey,
    listen: init.listen,
    relayServer: { maxReservations: MAX_RELAY_RESERVATIONS },
    connectionGater: createRelayGater(init.policy),
  })
  const policy = init.policy
  await gateDht(node, (peer) => policy.isAgent(peer) || policy.isClient(peer))

  // js-libp2p's relay keeps a reservation for its whole TTL (two hours) after
  // its peer has gone. An agent reserves again whenever it reconnects
  // (agent/relays.ts), so a reservation without its connection only holds
  // memory, one of MAX_RELAY_RESERVATIONS and a count in the reservations
  // gauge: an agent that churned through peer ids could fill the relay.
  node.addEventListener('peer:disconnect', (evt) => {
    reservationsOf(node)?.delete(evt.detail)
  })
  init.log.info({ peer_id: node.peerId.toString(), addrs: relayAddrs(node) }, 'relay listening')
  return node
}

/**
 * Answers DHT queries only from peers `allowed` names (agents and clients
 * holding a ticket), like the relay itself: anyone may connect to the
 * relay, and the DHT would otherwise tell any stranger who knows an agent's
 * peer id where the agent is.
 */
async function gateDht(node: MeshNode, allowed: (peerId: string) => boolean): Promise<void> {
  const registrar = (
    node as unknown as { components: { registrar: { getHandler(p: string): StreamHandlerRecord } } }
  ).components.registrar
  let record: StreamHandlerRecord
  try {
    record = registrar.getHandler(DHT_PROTOCOL)
  } catch {
    return // no DHT on this node
  }
  await node.unhandle(DHT_PROTOCOL)
  await node.handle(
    DHT_PROTOCOL,
    (stream, connection) => {
      if (!allowed(connection.remotePeer.toString())) {
        stream.abort(new Error('DHT queries are for mesh peers only'))
        return
      }
      return record.handler(stream, connection)
    },
    record.options,
  )
}

/**
 * TCP addresses agents and the CLI use to reach the relay, each ending in
 * /p2p/<relay>. Wildcard listen addresses are left out (libp2p also lists
 * the interface addresses they expand to), and so are circuit addresses
 * and WebSockets ones (relayWebSocketAddrs).
 */
export function relayAddrs(node: MeshNode): string[] {
  return listenAddrs(node).filter((a) => !isWebSocket(a))
}

/** The relay's WebSockets addresses (for browsers), each ending in /p2p/<relay>. */
export function relayWebSocketAddrs(node: MeshNode): string[] {
  return listenAddrs(node).filter(isWebSocket)
}

function isWebSocket(addr: string): boolean {
  return /\/wss?(\/|$)/.test(addr) || addr.includes('/tls/ws')
}

function listenAddrs(node: MeshNode): string[] {
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

/** What we use of the relay server's public `reservations` map (a PeerMap). */
interface Reservations {
  readonly size: number
  delete(peer: PeerId): void
}

/** The relay server's reservations, by peer; undefined on a node without the relay server. */
function reservationsOf(node: MeshNode): Reservations | undefined {
  return (node.services.relay as { reservations?: Reservations } | undefined)?.reservations
}

/** Reservations held and circuits open on the relay node, for metrics. */
export function relayUsage(node: MeshNode): { reservations: number; circuits: number } {
  let circuits = 0
  for (const connection of node.getConnections()) {
    for (const stream of connection.streams) {
      if (stream.protocol === RELAY_STOP_PROTOCOL && stream.status === 'open') circuits++
    }
  }
  return { reservations: reservationsOf(node)?.size ?? 0, circuits }
}

/** The coordinator's STUN responder and the ICE server URLs it hands out. */
export interface CoordinatorStun {
  /** `stun:<host>:<port>` for agents and clients; empty when STUN is off. */
  iceServers(): string[]
  close(): Promise<void>
}

/**
 * `--stun-address`: `IPV4:PORT`, the host empty for 0.0.0.0 and port 0 for
 * any free one; MESH_BAD_ARGUMENT otherwise.
 */
export function stunHostPort(address: string): { host: string; port: number } {
  return ipv4HostPort('--stun-address', address, '0.0.0.0:3478, or off')
}

/**
 * `IPV4:PORT` of a listening flag (host empty for 0.0.0.0; port 0 picks
 * one); MESH_BAD_ARGUMENT naming the flag and an `example` otherwise.
 */
export function ipv4HostPort(
  flag: string,
  address: string,
  example: string,
): { host: string; port: number } {
  const match = /^([0-9.]*):(\d{1,5})$/.exec(address)
  const host = match?.[1] || '0.0.0.0'
  const port = Number(match?.[2])
  if (match === null || port > 65535 || !isIPv4(host)) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid ${flag} ${JSON.stringify(address)}: use IPV4:PORT, e.g. ${flag} ${example}.`,
    )
  }
  return { host, port }
}

/**
 * Starts the STUN responder (netstack/stun.ts) on `address` (`host:port`,
 * IPv4; port 0 picks one), or nothing when `address` is false. Peers reach
 * it at the host they reach the coordinator at (the access URL's), unless
 * it listens on one address only.
 *
 * Known shortcoming: there is no separate setting for the URL handed out.
 * A coordinator whose access URL names a host that does not forward UDP
 * (a reverse proxy elsewhere), or that sits behind a 1:1 NAT whose public
 * address is on no interface, hands out a STUN URL that does not answer;
 * WebRTC upgrades then fail and connections stay relayed.
 * CODER_MESH_ICE_SERVERS on the agents and clients overrides it.
 */
export async function startCoordinatorStun(
  address: string | false,
  accessUrl: string,
  log: Logger,
): Promise<CoordinatorStun> {
  if (address === false) return { iceServers: () => [], close: async () => undefined }
  const { host, port } = stunHostPort(address)
  let server: StunServer
  try {
    server = await startStunServer({ host, port })
  } catch (err) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Cannot listen for STUN on ${address}: ${String(err)}.`,
    )
  }
  const publicHost = host === '0.0.0.0' ? new URL(accessUrl).hostname : host
  // An IPv6 access URL (`[::1]`): the responder answers IPv4 only.
  const urls = publicHost.startsWith('[') ? [] : [`stun:${publicHost}:${server.port}`]
  log.info({ addr: `${host}:${server.port}`, ice_servers: urls }, 'STUN listening')
  return { iceServers: () => urls, close: () => server.close() }
}
