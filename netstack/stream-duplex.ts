/**
 * Bridges a libp2p stream to a Node.js Duplex, with backpressure both ways:
 * when the Node side stops reading, the libp2p stream is paused (yamux then
 * stops granting window to the sender); when the libp2p side cannot take
 * more, writes wait for its drain. Half-close is kept: ending the Duplex
 * closes only our writable end.
 */
import type { Stream } from '@libp2p/interface'
import { Duplex } from 'node:stream'

/** Bytes buffered on the Node side before the libp2p stream is paused. */
const READ_HIGH_WATER_MARK = 256 * 1024

class StreamDuplex extends Duplex {
  readonly stream: Stream
  private paused = false

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

    // 'end' fires once the read buffer has drained after the remote closed
    // its writable end, so no byte the remote sent is dropped here. An abort
    // also dispatches 'end' (before its 'close' with the error): that is no
    // end of input, and the 'close' below turns it into an error instead of
    // a clean EOF that would pass a truncated transfer off as complete.
    stream.addEventListener('end', () => {
      if (stream.status !== 'aborted' && stream.status !== 'reset') this.push(null)
    })
    if (stream.readableEnded) this.push(null)

    stream.addEventListener('close', (evt) => {
      if (evt.error !== undefined) {
        this.destroy(evt.error)
        return
      }
      this.push(null)
    })
  }

  override _read(): void {
    if (this.paused) {
      this.paused = false
      if (this.stream.readStatus === 'paused') this.stream.resume()
    }
  }

  private pauseStream(): void {
    const status = this.stream.readStatus
    if (this.paused && (status === 'readable' || status === 'paused')) this.stream.pause()
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error) => void): void {
    try {
      if (this.stream.send(chunk)) {
        callback()
        return
      }
    } catch (err) {
      callback(err as Error)
      return
    }
    this.waitForDrain(callback)
  }

  /**
   * Calls back on the stream's next 'drain' (or with an error when it closes
   * first). Not `stream.onDrain()`: @libp2p/utils 7 never resets the promise
   * it hands out, so after the first drain every later call resolves at once
   * and writes stop waiting for the window: a fast writer then queues
   * without bound in the stream's write buffer (PROBES trap 4, field case B26).
   */
  private waitForDrain(callback: (err?: Error) => void): void {
    const stream = this.stream
    const cleanup = (): void => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
    }
    const onDrain = (): void => {
      cleanup()
      callback()
    }
    const onClose = (evt: Event): void => {
      cleanup()
      callback((evt as Event & { error?: Error }).error ?? new Error('the stream closed'))
    }
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
  }

  override _final(callback: (err?: Error) => void): void {
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

/** Wraps a libp2p stream; the returned Duplex owns it. */
export function toDuplex(stream: Stream): Duplex {
  return new StreamDuplex(stream)
}
