/**
 * Builds the libp2p nodes every role runs: TCP, Noise, Yamux, identify, ping
 * and the circuit relay transport; the coordinator adds the relay server.
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

  const node = await createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen: init.listen, announce: init.announce },
    transports: [
      // Interactive traffic: Nagle's algorithm costs hundreds of ms per SSH
      // round trip, so every socket sets no-delay (also the transport's
      // default; kept explicit so it cannot silently change).
      tcp({ dialOpts: { noDelay: true }, listenOpts: { noDelay: true } }),
      circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
    ],
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
