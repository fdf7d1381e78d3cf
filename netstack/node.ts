/**
 * Builds the libp2p nodes every role runs: TCP, Noise, Yamux, identify, ping
 * and the circuit relay transport; the coordinator adds the relay server.
 *
 * WebSockets (`websockets`, always on a relay server): the browser's way to
 * the relay. The coordinator's relay listens on /ws beside TCP; agents and
 * the CLI use TCP, so they do not load it.
 *
 * The private DHT (`dht`, dht.ts): served by the relay server; other nodes
 * run it as clients only when asked.
 *
 * WebRTC (optional, `webrtc`): the private-to-private transport, signalled
 * over a relayed connection, with ICE through NATs using the given STUN
 * servers. It is how two peers behind NATs get a direct connection (TCP
 * hole punching would need the dial to reuse the listen port, which Node's
 * sockets cannot). dial.ts uses it only to upgrade a relayed connection.
 * The STUN servers normally come from the coordinator (it runs one, see
 * coordinator/relay.ts) in its register and connect answers; they are read
 * at every WebRTC dial or answer, so a changed list applies without a new
 * node. CODER_MESH_ICE_SERVERS overrides them, and `none` turns WebRTC off.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import type { ConnectionGater, Libp2p, PrivateKey } from '@libp2p/interface'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p, type Libp2pOptions } from 'libp2p'
import { MAX_STREAMS_PER_PROTOCOL, STREAM_WINDOW_BYTES } from './constants.ts'
import type { DhtMode } from './dht.ts'

export interface RelayServerInit {
  /** Most reservations held at once. */
  maxReservations: number
}

export interface MeshNodeInit {
  privateKey: PrivateKey
  /** Multiaddrs to listen on, e.g. /ip4/127.0.0.1/tcp/0 or <relay>/p2p-circuit. */
  listen: string[]
  /** Extra addresses to announce, e.g. a public address behind port mapping. */
  announce?: string[]
  /** Run a circuit relay v2 server (the coordinator does). */
  relayServer?: RelayServerInit
  connectionGater?: ConnectionGater
  /** The WebSockets transport (dial, and listen on /ws addresses); on for a relay server. */
  websockets?: boolean
  /** The private DHT (dht.ts): `server` on a relay server by default, else none. */
  dht?: DhtMode | false
  /**
   * The WebRTC transport, for upgrading relayed connections. Undefined:
   * from CODER_MESH_ICE_SERVERS (on when it names at least one server),
   * except on a relay server, where it is off.
   */
  webrtc?: WebRtcInit | false
}

export interface WebRtcInit {
  /**
   * ICE servers: STUN (or TURN) URLs such as `stun:203.0.113.7:3478`, or a
   * function answering the current ones (asked at each WebRTC dial or answer).
   */
  iceServers: string[] | (() => string[])
}

/**
 * How often an agent or client pings each of its connections, in ms
 * (libp2p's connection monitor; a failed ping closes the connection). Each
 * ping is a new stream with its own protocol negotiation. Libp2p's 10 s
 * made a coordinator holding 1,000 idle agents spend a fifth of a core on
 * pings alone; 30 s still keeps NAT mappings open and notices a connection
 * that died without closing within a minute.
 */
const PING_INTERVAL_MS = 30_000

/**
 * The same on a relay server. Its every connection is already pinged from
 * the other end; its own pings only have to find peers that vanished
 * without closing, so their reservations go too.
 */
const RELAY_PING_INTERVAL_MS = 60_000

/**
 * Comma- or space-separated STUN/TURN URLs. Set, it overrides the
 * coordinator's list; `none` (or `off`) turns WebRTC off.
 */
export const ENV_ICE_SERVERS = 'CODER_MESH_ICE_SERVERS'

/** CODER_MESH_ICE_SERVERS: its URLs, `off`, or undefined when unset or empty. */
export function iceServersFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): string[] | 'off' | undefined {
  const text = (env[ENV_ICE_SERVERS] ?? '').trim()
  if (/^(none|off)$/i.test(text)) return 'off'
  const urls = text.split(/[\s,]+/).filter((s) => s !== '')
  return urls.length > 0 ? urls : undefined
}

/** The WebRTC settings from the environment alone, or undefined when it is off. */
export function webrtcFromEnv(env: NodeJS.ProcessEnv = process.env): WebRtcInit | undefined {
  const fromEnv = iceServersFromEnv(env)
  return Array.isArray(fromEnv) ? { iceServers: fromEnv } : undefined
}

/**
 * WebRTC for an agent or client: the coordinator's ICE servers (`current`,
 * read at each use) unless CODER_MESH_ICE_SERVERS overrides them or says
 * `none`.
 */
export function meshWebrtc(
  current: () => string[] | undefined,
  env: NodeJS.ProcessEnv = process.env,
): WebRtcInit | false {
  const fromEnv = iceServersFromEnv(env)
  if (fromEnv === 'off') return false
  if (fromEnv !== undefined) return { iceServers: fromEnv }
  return { iceServers: () => current() ?? [] }
}

export type MeshNode = Libp2p<{ identify: unknown; ping: unknown; relay?: unknown; dht?: unknown }>

/** Creates and starts a node. */
export async function createMeshNode(init: MeshNodeInit): Promise<MeshNode> {
  const services: Libp2pOptions['services'] = {
    identify: identify(),
    ping: ping(),
  }
  if (init.relayServer !== undefined) {
    services.relay = circuitRelayServer({
      maxInboundHopStreams: MAX_STREAMS_PER_PROTOCOL,
      maxOutboundStopStreams: MAX_STREAMS_PER_PROTOCOL,
      reservations: {
        maxReservations: init.relayServer.maxReservations,
        // The stock limits (128 KiB, 2 minutes per relayed connection) are
        // for signalling only. Only authenticated peers reach the relay
        // (see the connection gater), so their connections carry real work.
        applyDefaultLimit: false,
      },
    })
  }

  const dht = init.dht ?? (init.relayServer !== undefined ? 'server' : false)
  if (dht !== false) {
    // Loaded only when used (dht.ts): a CLI or agent node does not pay for it.
    const { dhtService } = await import('./dht.ts')
    services.dht = (await dhtService(dht)) as NonNullable<Libp2pOptions['services']>['dht']
  }

  const transports: NonNullable<Libp2pOptions['transports']> = [
    // Interactive traffic: Nagle's algorithm costs hundreds of ms per SSH
    // round trip, so every socket sets no-delay (also the transport's
    // default; kept explicit so it cannot silently change).
    tcp({ dialOpts: { noDelay: true }, listenOpts: { noDelay: true } }),
    circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
  ]
  const listen = [...init.listen]
  if (init.websockets ?? init.relayServer !== undefined) {
    // Loaded only when used, like WebRTC below: clients start faster without it.
    const { webSockets } = await import('@libp2p/websockets')
    transports.push(webSockets())
  }
  // A relay server (the coordinator) has no use for WebRTC unless told so.
  const webrtc =
    init.webrtc !== undefined
      ? init.webrtc || undefined
      : init.relayServer === undefined
        ? webrtcFromEnv()
        : undefined
  if (webrtc !== undefined) {
    const servers = webrtc.iceServers
    const rtcConfiguration = (): { iceServers: { urls: string }[] } => ({
      iceServers: (typeof servers === 'function' ? servers() : servers).map((urls) => ({ urls })),
    })
    // The module (and its native node-datachannel) loads off the start-up
    // path: on the first dial, or in the background on a listening node.
    const { lazyWebRTC } = await import('./lazy-webrtc.ts')
    const listening = listen.length > 0
    transports.push(lazyWebRTC({ rtcConfiguration, answer: listening }))
    // A listening node (the agent) advertises <relay>/p2p-circuit/webrtc
    // addresses and answers WebRTC signalling.
    if (listening) listen.push('/webrtc')
  }

  const node = await createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen, announce: init.announce },
    transports,
    connectionEncrypters: [noise()],
    streamMuxers: [
      yamux({
        maxInboundStreams: 4 * MAX_STREAMS_PER_PROTOCOL,
        maxOutboundStreams: 4 * MAX_STREAMS_PER_PROTOCOL,
        streamOptions: {
          maxStreamWindowSize: STREAM_WINDOW_BYTES,
          maxReadBufferLength: 2 * STREAM_WINDOW_BYTES,
        },
      }),
    ],
    connectionGater: init.connectionGater,
    connectionMonitor: {
      pingInterval: init.relayServer !== undefined ? RELAY_PING_INTERVAL_MS : PING_INTERVAL_MS,
    },
    connectionManager: {
      // Many agents behind one NAT, or a test starting many, come from one
      // address; the stock limit of 5 inbound connections a second per
      // address would refuse them.
      inboundConnectionThreshold: 1000,
      // Connections still in their Noise/Yamux upgrade: the stock 10 made an
      // agent reset the 11th of 30 clients connecting at once (editors and
      // scripts open SSH connections in bursts).
      maxIncomingPendingConnections: 256,
      maxConnections: 10_000,
    },
    services,
  })
  return node as MeshNode
}
