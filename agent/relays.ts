/**
 * Keeps a circuit relay reservation on each of the coordinator's relays,
 * so clients that cannot reach the agent directly reach it through them.
 *
 * A reservation lives as long as the connection to the relay: when the
 * coordinator restarts, libp2p drops the reservation and its circuit
 * address, and nothing in libp2p makes it again for a relay that was
 * configured by listening. The keeper notices (a relay peer disconnects, or
 * a heartbeat finds no circuit address for it), dials the relay, and
 * listens on `<relay>/p2p-circuit` again, which makes a new reservation.
 */
import type { PeerId } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { MeshNode } from '../netstack/node.ts'
import type { Logger } from '../sdk/logger.ts'
import { backoffDelay } from './register.ts'

/** How long dialing a relay may take, in ms. */
const RELAY_DIAL_TIMEOUT_MS = 10_000
/** Wait after a relay disconnects before trying it again, in ms. */
const RECONNECT_DELAY_MS = 1000

interface TransportListener {
  listen(addrs: Multiaddr[]): Promise<void>
}

/** The relay's peer id: the last /p2p/ component of its multiaddr. */
export function relayPeerId(relay: string): string | undefined {
  return /\/p2p\/([^/]+)$/.exec(relay)?.[1]
}

export class RelayKeeper {
  private readonly node: MeshNode
  private readonly log: Logger
  private relays: string[] = []
  private running: Promise<boolean> | undefined
  private timer: NodeJS.Timeout | undefined
  private failures = 0
  private stopped = false
  private readonly controller = new AbortController()
  private readonly onDisconnect = (evt: CustomEvent<PeerId>): void => {
    const peer = evt.detail.toString()
    if (this.relays.some((r) => relayPeerId(r) === peer)) {
      this.log.info({ relay_peer: peer }, 'lost the relay connection')
      this.schedule(RECONNECT_DELAY_MS)
    }
  }

  constructor(node: MeshNode, log: Logger) {
    this.node = node
    this.log = log
    node.addEventListener('peer:disconnect', this.onDisconnect)
  }

  /** Sets the relays to keep (from the latest registration); checks at once when they changed. */
  setRelays(relays: string[]): void {
    const next = relays.filter((r) => relayPeerId(r) !== undefined)
    const changed = next.length !== this.relays.length || next.some((r, i) => r !== this.relays[i])
    this.relays = next
    if (changed) this.schedule(0)
  }

  /** True when this node holds a reservation (a circuit address) on `relay`. */
  isReserved(relay: string): boolean {
    const peer = relayPeerId(relay)
    if (peer === undefined) return false
    const marker = `/p2p/${peer}/p2p-circuit`
    return this.node.getMultiaddrs().some((a) => a.toString().includes(marker))
  }

  /**
   * Makes a reservation on every relay that lacks one; true when all have
   * one. Failures are logged, never thrown; concurrent calls share one run.
   */
  ensure(): Promise<boolean> {
    this.running ??= this.ensureAll().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  stop(): void {
    this.stopped = true
    this.controller.abort()
    clearTimeout(this.timer)
    this.node.removeEventListener('peer:disconnect', this.onDisconnect)
  }

  private async ensureAll(): Promise<boolean> {
    let all = true
    for (const relay of this.relays) {
      if (this.stopped) return false
      if (this.isReserved(relay)) continue
      try {
        await this.reserve(relay)
        this.log.info({ relay }, 'relay reservation made')
      } catch (err) {
        all = false
        this.log.warn({ relay, err: (err as Error).message }, 'could not make a relay reservation')
      }
    }
    return all
  }

  private async reserve(relay: string): Promise<void> {
    const signal = AbortSignal.any([
      this.controller.signal,
      AbortSignal.timeout(RELAY_DIAL_TIMEOUT_MS),
    ])
    // Dial first: a listen that fails leaves an idle listener behind in
    // libp2p, so only listen once the relay answers.
    await this.node.dial(multiaddr(relay), { signal })
    const transports = (
      this.node as unknown as { components: { transportManager: TransportListener } }
    ).components.transportManager
    await transports.listen([multiaddr(`${relay}/p2p-circuit`)])
    if (!this.isReserved(relay)) throw new Error('the relay gave no circuit address')
  }

  /** Runs ensure() after `delay` ms, then again with backoff until every relay is reserved. */
  private schedule(delay: number): void {
    if (this.stopped) return
    if (this.timer !== undefined) {
      if (delay > 0) return
      clearTimeout(this.timer)
    }
    this.timer = setTimeout(() => {
      this.timer = undefined
      void this.ensure().then((all) => {
        if (all) {
          this.failures = 0
          return
        }
        this.schedule(backoffDelay(this.failures++))
      })
    }, delay)
    this.timer.unref()
  }
}
