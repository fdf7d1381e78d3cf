/**
 * The agent's side of port forwarding (wire format in netstack/forward.ts):
 * each stream names a port, the agent connects to it on loopback inside the
 * workspace, answers with a status byte, then bridges the stream and the
 * socket with backpressure and half-close (netstack/bridge.ts).
 *
 * A target that refuses is answered with FORWARD_FAILED at once, so the
 * client closes its local connection right away instead of letting it time
 * out (field case B10); a refusal costs nothing that later streams share.
 */
import { connect, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { bridge } from '../netstack/bridge.ts'
import {
  encodeForwardStatus,
  FORWARD_CONNECTED,
  FORWARD_FAILED,
  readForwardRequest,
} from '../netstack/forward.ts'
import type { MeshStreamHandler } from '../netstack/serve.ts'
import { SECOND } from '../sdk/config.ts'

/** How long connecting to one target address may take, in ms. */
export const DEFAULT_FORWARD_CONNECT_TIMEOUT = 10 * SECOND
/** How long a stream may take to send its request after the ticket, in ms. */
export const DEFAULT_FORWARD_REQUEST_TIMEOUT = 10 * SECOND
/** How long a refused stream is kept for the client to close it, in ms. */
const REFUSED_LINGER_MS = 10 * SECOND
/** Where forwarded ports are looked for, in order: IPv4 loopback, then IPv6. */
export const DEFAULT_FORWARD_HOSTS: readonly string[] = ['127.0.0.1', '::1']

export interface ForwardHandlerInit {
  /** Per address, in ms; default DEFAULT_FORWARD_CONNECT_TIMEOUT. */
  connectTimeout?: number
  /** Addresses to try in order; default DEFAULT_FORWARD_HOSTS. */
  hosts?: readonly string[]
}

/** The TCP_PROTOCOL handler, for serveMeshProtocol. */
export function createForwardHandler(init: ForwardHandlerInit = {}): MeshStreamHandler {
  const connectTimeout = init.connectTimeout ?? DEFAULT_FORWARD_CONNECT_TIMEOUT
  const hosts = init.hosts ?? DEFAULT_FORWARD_HOSTS

  return async function forward(duplex, { log }) {
    // Failures surface through the reads and the bridge below (the stream's
    // Duplex has an error listener of its own: a client resetting its
    // stream while we connect does not crash the agent).
    const timer = setTimeout(
      () => duplex.destroy(new Error('no forward request in time')),
      DEFAULT_FORWARD_REQUEST_TIMEOUT,
    )
    const port = await readForwardRequest(duplex).finally(() => clearTimeout(timer))

    let socket: Socket
    try {
      socket = await connectLoopback(port, hosts, connectTimeout)
    } catch (err) {
      log.debug({ port, err: (err as Error).message }, 'forward target refused')
      refuse(duplex)
      return
    }

    log.debug({ port }, 'forward opened')
    duplex.write(encodeForwardStatus(FORWARD_CONNECTED))
    const result = await bridge(socket, duplex)
    log.debug(
      { port, sent: result.received, received: result.sent, err: result.error?.message },
      'forward closed',
    )
  }
}

/** Answers FAILED and ends our side; the client closes its side on reading it. */
function refuse(duplex: Duplex): void {
  duplex.end(encodeForwardStatus(FORWARD_FAILED))
  // Drop anything the client sent early, so its FIN is seen and the stream closes.
  duplex.resume()
  setTimeout(() => duplex.destroy(), REFUSED_LINGER_MS).unref()
}

/** Connects to `port` on the first of `hosts` that accepts. */
export async function connectLoopback(
  port: number,
  hosts: readonly string[],
  timeout: number,
): Promise<Socket> {
  const errors: string[] = []
  for (const host of hosts) {
    try {
      return await connectOnce(host, port, timeout)
    } catch (err) {
      errors.push((err as Error).message)
    }
  }
  throw new Error(`connect to port ${port}: ${errors.join('; ')}`)
}

function connectOnce(host: string, port: number, timeout: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // Half-open: the client's FIN must end only our write side toward the
    // target, so the target's answer still comes back (bridge.ts).
    const socket = connect({ host, port, allowHalfOpen: true, noDelay: true })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`${host}:${port}: timed out`))
    }, timeout)
    const onError = (err: Error): void => {
      clearTimeout(timer)
      reject(err)
    }
    socket.once('error', onError)
    socket.once('connect', () => {
      clearTimeout(timer)
      socket.off('error', onError)
      resolve(socket)
    })
  })
}
