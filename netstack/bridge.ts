/**
 * Joins a TCP socket and a mesh stream (a Duplex from stream-duplex.ts) so
 * bytes flow both ways until both sides have ended, the way an SSH or
 * kernel port forward behaves:
 *
 * - Backpressure end to end: each direction is a `pipeline`, so a slow
 *   reader on one end pauses the writer on the other (yamux stops granting
 *   window), and no buffer grows past its high-water mark plus one window.
 * - Half-close both ways: the socket's EOF ends only the stream's writable
 *   side (a yamux FIN) and the stream's end only the socket's writable side
 *   (a TCP FIN). The socket must allow half-open connections.
 * - An error on either end (a reset, a refused write) destroys both.
 *
 * The socket may also be a Unix socket (connect's link, connect-link.ts).
 */
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** Listeners a bridged Duplex may have per event before Node warns of a leak. */
const BRIDGE_MAX_LISTENERS = 32

export interface BridgeResult {
  /** Bytes read from the socket and written to the stream. */
  sent: number
  /** Bytes read from the stream and written to the socket. */
  received: number
  /** The first error that tore the bridge down, if any. */
  error?: Error
}

/**
 * Bridges `socket` and `duplex`; resolves once both directions are done
 * (never rejects), leaving both destroyed or ended.
 */
export async function bridge(socket: Socket, duplex: Duplex): Promise<BridgeResult> {
  if (!socket.allowHalfOpen) {
    throw new TypeError('bridge needs a socket that allows half-open connections')
  }
  // Interactive traffic through forwards (SSH, HTTP/1 request-response)
  // pays Nagle's delay on every small write (PROBES trap 6).
  socket.setNoDelay(true)

  // Two pipelines, this bridge and the stream's owners each listen for the
  // Duplex's errors: more than Node's default of 10 by design, not a leak.
  duplex.setMaxListeners(Math.max(duplex.getMaxListeners(), BRIDGE_MAX_LISTENERS))

  const result: BridgeResult = { sent: 0, received: 0 }
  // A reset stream resets the socket (RST, not FIN), so the local program
  // sees a failed transfer rather than a short one. This listener goes on
  // before the pipelines' own, so it runs while the socket is still open.
  duplex.on('error', (err: Error) => {
    result.error ??= err
    if (!socket.destroyed) reset(socket)
  })
  socket.on('error', (err: Error) => {
    result.error ??= err
  })

  const fail = (err: unknown): void => {
    result.error ??= err instanceof Error ? err : new Error(String(err))
    // One broken direction breaks the other: a reset is not a half-close.
    socket.destroy()
    duplex.destroy()
  }
  await Promise.all([pipeline(socket, duplex).catch(fail), pipeline(duplex, socket).catch(fail)])

  result.sent = socket.bytesRead
  result.received = socket.bytesWritten
  return result
}

/**
 * Closes a TCP socket with an RST; a Unix socket has no such thing (Node
 * throws ERR_INVALID_HANDLE_TYPE for one), and is simply destroyed.
 */
function reset(socket: Socket): void {
  try {
    socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}
