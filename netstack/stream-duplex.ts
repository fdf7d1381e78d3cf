/**
 * Bridges a libp2p stream to a Node.js Duplex, with backpressure both ways:
 * when the Node side stops reading, the libp2p stream is paused (yamux then
 * stops granting window to the sender); when the libp2p side cannot take
 * more, writes wait for its drain. Half-close is kept: ending the Duplex
 * closes only our writable end.
 */
import type { Stream } from '@libp2p/interface'
import { Duplex } from 'node:stream'
import { Uint8ArrayList } from 'uint8arraylist'

/** Bytes buffered on the Node side before the libp2p stream is paused. */
const READ_HIGH_WATER_MARK = 256 * 1024

/**
 * Writes made in one event-loop turn are gathered up to this many bytes and
 * handed to the stream as one send: one Yamux frame and full Noise messages
 * instead of a frame per socket read (64 KiB each). Each frame and each
 * message costs the same fixed work on both ends whatever its size (events,
 * list bookkeeping, a cipher set-up, a write), so that work was most of the
 * CPU a forwarded byte cost. A quarter MiB keeps the receiver, which takes a
 * frame only once all of it has arrived, forwarding while the rest streams.
 */
const WRITE_BATCH_BYTES = 256 * 1024

class StreamDuplex extends Duplex {
  readonly stream: Stream
  private paused = false

  /** Written, not yet handed to the stream; sent at the end of this turn. */
  private pending: Uint8Array[] = []
  private pendingBytes = 0
  private flushQueued = false
  /** The last send found the stream full: wait for its 'drain'. */
  private full = false
  /** A write held back until the stream takes more (one at most: Writable). */
  private held: ((err?: Error) => void) | undefined

  constructor(stream: Stream) {
    super({ allowHalfOpen: true, readableHighWaterMark: READ_HIGH_WATER_MARK })
    this.stream = stream

    stream.addEventListener('message', (evt) => {
      const data = evt.data
      const chunk = data instanceof Uint8Array ? data : data.subarray()
      if (!this.push(chunk) && !this.paused) {
        this.paused = true
        // Not synchronously: this handler runs inside the stream's resume(),
        // which, after dispatching the buffered data to us, goes on to tell
        // yamux to send window updates again. A pause made here would be
        // undone at once, the remote would keep sending while we are
        // paused, and the read buffer would overflow and abort the stream.
        queueMicrotask(() => this.pauseStream())
      }
    })

    // Whether the other end really finished sending (its FIN came): the
    // stream also reports its remote side closed when the connection under
    // it went away, which is no end of input.
    let remoteFinished = stream.remoteWriteStatus === 'closed'
    stream.addEventListener('remoteCloseWrite', () => {
      remoteFinished = true
    })

    // 'end' fires once the read buffer has drained after the remote closed
    // its writable end, so no byte the remote sent is dropped here. An abort,
    // or a connection that went away, also dispatches 'end': that is no end
    // of input, and the 'close' below turns it into an error instead of a
    // clean EOF that would pass a truncated transfer off as complete.
    stream.addEventListener('end', () => {
      const failed = stream.status === 'aborted' || stream.status === 'reset'
      if (remoteFinished && !failed) this.push(null)
    })
    if (stream.readableEnded && remoteFinished) this.push(null)

    stream.addEventListener('close', (evt) => {
      const held = this.held
      this.held = undefined
      held?.(evt.error ?? new Error('the stream closed'))
      if (evt.error !== undefined) {
        this.destroy(evt.error)
        return
      }
      if (!remoteFinished) {
        this.destroy(new Error('the connection closed before the other end finished sending'))
        return
      }
      // Both ends are done, but a paused stream may still hold what the
      // remote sent last: that is read first (see _read), and the stream's
      // 'end' above comes once it is drained.
      if (stream.readBufferLength === 0) this.push(null)
    })

    // Not stream.onDrain(): @libp2p/utils 7 never resets the promise it
    // hands out, so after the first drain every later call resolves at once
    // and a fast writer would queue without bound in the stream's write
    // buffer (PROBES trap 4, field case B26). Nor is a 'drain' itself proof
    // of room: Yamux dispatches one on every window update, and the stream's
    // own handler sends its backlog only in a microtask after it; so room is
    // judged after that microtask, and again when the backlog is gone. Never
    // from inside these events: 'idle' comes while the stream is still in
    // its send loop, where a send() is queued but, the loop being over,
    // never sent.
    const judgeRoom = (): void => {
      if (this.full) queueMicrotask(() => this.onRoom())
    }
    stream.addEventListener('drain', judgeRoom)
    stream.addEventListener('idle', judgeRoom)
  }

  /** Whether the stream takes more now, with no backlog of its own beyond a batch. */
  private streamHasRoom(): boolean {
    return !this.stream.writableNeedsDrain && this.stream.writeBufferLength < WRITE_BATCH_BYTES
  }

  private onRoom(): void {
    if (!this.full || !this.streamHasRoom()) return
    this.full = false
    this.flush()
  }

  override _read(): void {
    if (this.paused) {
      this.paused = false
      if (this.stream.readStatus !== 'paused') return
      try {
        this.stream.resume()
      } catch {
        // A closed stream dispatches what it holds before it fails to tell
        // the remote to send more, which is all that is wanted from it here.
      }
    }
  }

  private pauseStream(): void {
    const status = this.stream.readStatus
    if (this.paused && (status === 'readable' || status === 'paused')) this.stream.pause()
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error) => void): void {
    this.pending.push(chunk)
    this.pendingBytes += chunk.byteLength
    if (!this.full && this.pendingBytes < WRITE_BATCH_BYTES) {
      // Taken: more may come this turn; setImmediate runs once this turn's
      // I/O callbacks are done, so a lone interactive write waits no longer.
      callback()
      if (!this.flushQueued) {
        this.flushQueued = true
        setImmediate(() => {
          this.flushQueued = false
          this.flush()
        })
      }
      return
    }
    // A full batch, or a stream that cannot take more: the writer waits until
    // the stream has taken this batch and has room again.
    this.held = callback
    if (!this.full) this.flush()
  }

  /** Hands what is pending to the stream, and lets a held writer go on if it has room. */
  private flush(): void {
    if (this.destroyed) return

    if (this.pendingBytes > 0) {
      const batch =
        this.pending.length === 1 ? this.pending[0]! : new Uint8ArrayList(...this.pending)
      this.pending = []
      this.pendingBytes = 0
      try {
        this.full = !this.stream.send(batch) || !this.streamHasRoom()
      } catch (err) {
        this.releaseHeld(err as Error)
        this.destroy(err as Error)
        return
      }
    }

    if (!this.full) this.releaseHeld()
  }

  private releaseHeld(err?: Error): void {
    const held = this.held
    this.held = undefined
    held?.(err)
  }

  override _final(callback: (err?: Error) => void): void {
    // Whatever is pending goes first; close() sends the FIN once the
    // stream's own write buffer has drained, so nothing is cut short.
    this.flush()
    if (this.destroyed) {
      callback(new Error('the stream closed'))
      return
    }
    this.stream.close().then(() => callback(), callback)
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const finished = this.writableFinished && this.readableEnded
    const open = this.stream.status === 'open' || this.stream.status === 'closing'
    if (open && (err !== null || !finished)) {
      this.stream.abort(err ?? new Error('stream destroyed locally'))
    }
    callback(err)
  }
}

/**
 * Wraps a libp2p stream; the returned Duplex owns it. A stream cut off by a
 * lost connection or a reset fails the Duplex with an 'error', which its
 * users see through their reads, writes and pipelines; one that has stopped
 * listening must not bring the whole process down with an unhandled error,
 * so the Duplex always has a listener of its own.
 */
export function toDuplex(stream: Stream): Duplex {
  const duplex = new StreamDuplex(stream)
  duplex.on('error', () => undefined)
  return duplex
}
