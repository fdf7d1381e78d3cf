/**
 * Builds the libp2p nodes every role runs: TCP, Noise, Yamux, identify, ping
 * and the circuit relay transport; the coordinator adds the relay server.
 *
 * WebRTC (optional, `webrtc`): the private-to-private transport, signalled
 * over a relayed connection, with ICE through NATs using the given STUN
 * servers. It is how two peers behind NATs get a direct connection (TCP
 * hole punching would need the dial to reuse the listen port, which Node's
 * sockets cannot). dial.ts uses it only to upgrade a relayed connection.
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
  /**
   * The WebRTC transport, for upgrading relayed connections. Undefined:
   * from CODER_MESH_ICE_SERVERS (on when it names at least one server),
   * except on a relay server, where it is off.
   */
  webrtc?: WebRtcInit | false
}

export interface WebRtcInit {
  /** ICE servers: STUN (or TURN) URLs such as `stun:203.0.113.7:3478`. */
  iceServers: string[]
}

/** Comma- or space-separated STUN/TURN URLs; setting it turns WebRTC on. */
export const ENV_ICE_SERVERS = 'CODER_MESH_ICE_SERVERS'

/** The WebRTC settings from the environment, or undefined when it is off. */
export function webrtcFromEnv(env: NodeJS.ProcessEnv = process.env): WebRtcInit | undefined {
  const iceServers = (env[ENV_ICE_SERVERS] ?? '').split(/[\s,]+/).filter((s) => s !== '')
  return iceServers.length > 0 ? { iceServers } : undefined
}

export type MeshNode = Libp2p<{ identify: unknown; ping: unknown; relay?: unknown }>

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

  const transports: NonNullable<Libp2pOptions['transports']> = [
    // Interactive traffic: Nagle's algorithm costs hundreds of ms per SSH
    // round trip, so every socket sets no-delay (also the transport's
    // default; kept explicit so it cannot silently change).
    tcp({ dialOpts: { noDelay: true }, listenOpts: { noDelay: true } }),
    circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
  ]
  const listen = [...init.listen]
  // A relay server (the coordinator) has no use for WebRTC unless told so.
  const webrtc =
    init.webrtc !== undefined
      ? init.webrtc || undefined
      : init.relayServer === undefined
        ? webrtcFromEnv()
        : undefined
  if (webrtc !== undefined) {
    // Loaded only when used: it brings a native module (node-datachannel).
    const { webRTC } = await import('@libp2p/webrtc')
    transports.push(
      webRTC({ rtcConfiguration: { iceServers: webrtc.iceServers.map((urls) => ({ urls })) } }),
    )
    // A listening node (the agent) advertises <relay>/p2p-circuit/webrtc
    // addresses; incoming WebRTC is accepted either way.
    if (listen.length > 0) listen.push('/webrtc')
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
    connectionManager: {
      // Many agents behind one NAT, or a test starting many, come from one
      // address; the stock limit of 5 inbound connections a second per
      // address would refuse them.
      inboundConnectionThreshold: 1000,
      maxConnections: 10_000,
    },
    services,
  })
  return node as MeshNode
}
