/**
 * The WebRTC transport with @libp2p/webrtc loaded off the start-up path.
 * The module (with node-datachannel, a native module) takes about 250 ms
 * to load on our 2-core machines, much more under load. Loaded up front it
 * would delay every CLI command that reaches an agent (`ssh` through
 * OpenSSH's ProxyCommand included) and the agent's first registration.
 *
 * - A node that only dials (the CLI) loads it on its first WebRTC dial: it
 *   dials WebRTC only to upgrade a connection that already works
 *   (netstack/dial.ts), so nobody waits for it.
 * - A listening node (the agent, `answer`) loads it on the first WebRTC
 *   signalling stream a client opens: a stand-in handler takes that stream,
 *   loads the module, lets the real transport register its own handler and
 *   hands the stream over. An agent nobody upgrades to WebRTC never loads it
 *   (about 21 MiB of its idle memory). Its listener needs nothing from the
 *   module (it only derives `<relay>/p2p-circuit/webrtc` addresses from the
 *   relay listeners, as @libp2p/webrtc's own WebRTCPeerListener does), so
 *   the node's addresses are there at once.
 */
import { serviceCapabilities, transportSymbol } from '@libp2p/interface'
import type {
  Connection,
  DialTransportOptions,
  Listener,
  ListenerEvents,
  Stream,
  Transport,
} from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { TypedEventEmitter } from 'main-event'

type RealTransport = Transport & {
  start?: () => void | Promise<void>
  stop?: () => void | Promise<void>
}

export interface LazyWebRtcInit {
  /** Passed to webRTC() as is. */
  rtcConfiguration: () => { iceServers: { urls: string }[] }
  /** Answer WebRTC signalling (listening nodes), loading the module on the first stream. */
  answer?: boolean
}

type StreamHandler = (stream: Stream, connection: Connection) => void | Promise<void>

interface Components {
  transportManager: { getListeners(): Listener[] }
  events: EventTarget
  registrar: {
    handle(protocol: string, handler: StreamHandler, options?: object): Promise<void>
    unhandle(protocol: string): Promise<void>
    getHandler(protocol: string): { handler: StreamHandler }
  }
}

/** @libp2p/webrtc's signalling protocol, named here so answering it needs no import. */
const SIGNALING_PROTOCOL = '/webrtc-signaling/0.0.1'

const CIRCUIT = /\/p2p\/[^/]+\/p2p-circuit$/

/** `/webrtc` (listen) or `<relay>/p2p-circuit/webrtc[/p2p/<peer>]` (dial). */
function isWebRtcAddr(ma: Multiaddr): boolean {
  const text = ma.toString()
  return text === '/webrtc' || /\/p2p-circuit\/webrtc(\/p2p\/[^/]+)?$/.test(text)
}

/** Announces `<circuit>/webrtc` for every relay circuit this node listens on. */
class CircuitWebRtcListener extends TypedEventEmitter<ListenerEvents> implements Listener {
  private readonly components: Components

  constructor(components: Components) {
    super()
    this.components = components
  }

  private readonly onTransportListening = (event: Event): void => {
    const listener = (event as CustomEvent<Listener>).detail
    if (listener.getAddrs().some((ma) => CIRCUIT.test(ma.toString()))) {
      this.safeDispatchEvent('listening')
    }
  }

  async listen(): Promise<void> {
    this.components.events.addEventListener('transport:listening', this.onTransportListening)
  }

  getAddrs(): Multiaddr[] {
    return this.components.transportManager
      .getListeners()
      .filter((l) => !(l instanceof CircuitWebRtcListener))
      .flatMap((l) => l.getAddrs().filter((ma) => CIRCUIT.test(ma.toString())))
      .map((ma) => ma.encapsulate('/webrtc'))
  }

  updateAnnounceAddrs(): void {}

  async close(): Promise<void> {
    this.components.events.removeEventListener('transport:listening', this.onTransportListening)
    queueMicrotask(() => this.safeDispatchEvent('close'))
  }
}

export function lazyWebRTC(init: LazyWebRtcInit): (components: unknown) => Transport {
  return (components) => {
    const { registrar } = components as Components
    let real: Promise<RealTransport> | undefined
    let standIn = false
    let stopped = false
    const load = (): Promise<RealTransport> =>
      (real ??= import('@libp2p/webrtc').then(async ({ webRTC }) => {
        const factory = webRTC({ rtcConfiguration: init.rtcConfiguration }) as unknown
        const transport = (factory as (c: unknown) => RealTransport)(components)
        if (stopped) throw new Error('the node stopped')
        // The real transport registers its own signalling handler.
        if (standIn) {
          standIn = false
          await registrar.unhandle(SIGNALING_PROTOCOL)
        }
        await transport.start?.()
        return transport
      }))

    /** Takes the first signalling streams while the module loads, then hands them over. */
    const answerFirst: StreamHandler = async (stream, connection) => {
      try {
        await load()
        await registrar.getHandler(SIGNALING_PROTOCOL).handler(stream, connection)
      } catch (err) {
        stream.abort(err as Error)
      }
    }

    const transport = {
      [transportSymbol]: true,
      [Symbol.toStringTag]: '@libp2p/webrtc (loaded lazily)',
      [serviceCapabilities]: ['@libp2p/transport'],
      dialFilter: (addrs: Multiaddr[]) =>
        addrs.filter((ma) => isWebRtcAddr(ma) && ma.toString() !== '/webrtc'),
      listenFilter: (addrs: Multiaddr[]) => addrs.filter((ma) => ma.toString() === '/webrtc'),
      createListener(): Listener {
        return new CircuitWebRtcListener(components as Components)
      },
      async dial(ma: Multiaddr, options: DialTransportOptions): Promise<Connection> {
        if (stopped) throw new Error('the node is stopping')
        return (await load()).dial(ma, options)
      },
      async start(): Promise<void> {
        stopped = false
        if (init.answer !== true) return
        // Signalling comes over the relayed connection, a limited one.
        await registrar.handle(SIGNALING_PROTOCOL, answerFirst, { runOnLimitedConnection: true })
        standIn = true
      },
      async stop(): Promise<void> {
        stopped = true
        if (standIn) {
          standIn = false
          await registrar.unhandle(SIGNALING_PROTOCOL)
        }
        const loaded = await real?.catch(() => undefined)
        // A node started again makes a new transport (the module stays loaded).
        real = undefined
        await loaded?.stop?.()
      },
    }
    return transport as Transport
  }
}
