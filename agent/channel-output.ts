/**
 * Output of a session's process onto its SSH channel: stdout and stderr,
 * one chunk at a time, each handed to the SSH layer (within the client's
 * window) before the next, so that when the last write resolves every byte
 * is queued ahead of whatever comes next (exit-status, EOF, CLOSE: B04).
 *
 * Writes are serialized across both streams because of ssh2 1.x's channel
 * code: a write that waits for window space parks in `_chunk`/`_chunkErr`,
 * and a window adjust resumes `_chunk` if set, else `_chunkErr`. `_chunk` is
 * never cleared after it is resumed, so a later stderr write that waits for
 * window makes the next adjust resend stale stdout bytes (and call their
 * callback twice) while stderr hangs; and with stdout and stderr both
 * waiting, stderr is never resumed. One pending write at a time, plus
 * clearing the parked fields on every write, keeps that state correct.
 */
import type { Writable } from 'node:stream'
import type { ServerChannel } from 'ssh2'

type WriteFn = (chunk: Buffer, encoding: BufferEncoding | null, cb: (err?: Error) => void) => void

interface ChannelInternals {
  _write: WriteFn
  _chunk?: Buffer
  _chunkcb?: unknown
  _chunkErr?: Buffer
  _chunkcbErr?: unknown
  stderr: Writable & { _write: WriteFn }
}

const patched = new WeakSet<object>()

/** Makes ssh2's deferred-write bookkeeping forget a chunk once it is written again. */
export function fixDeferredWrites(channel: ServerChannel): void {
  if (patched.has(channel)) return
  patched.add(channel)
  const c = channel as unknown as ChannelInternals
  const writeOut = c._write
  c._write = function (chunk, encoding, cb) {
    c._chunk = undefined
    c._chunkcb = undefined
    writeOut.call(this, chunk, encoding, cb)
  }
  const writeErr = c.stderr._write
  c.stderr._write = function (chunk, encoding, cb) {
    c._chunkErr = undefined
    c._chunkcbErr = undefined
    writeErr.call(this, chunk, encoding, cb)
  }
}

export type OutputTarget = 'stdout' | 'stderr'

export class ChannelOutput {
  private readonly channel: ServerChannel
  private tail: Promise<boolean> = Promise.resolve(true)
  private closed = false
  private release: (() => void) | undefined

  constructor(channel: ServerChannel) {
    this.channel = channel
    fixDeferredWrites(channel)
  }

  /**
   * Queues `chunk` behind every earlier write; resolves once the SSH layer
   * took it: true, or false when the channel closed and the bytes are lost.
   */
  write(target: OutputTarget, chunk: Buffer): Promise<boolean> {
    this.tail = this.tail.then(() => this.writeNow(target, chunk))
    return this.tail
  }

  /** Resolves when every queued write is done (true) or the channel closed (false). */
  flush(): Promise<boolean> {
    return this.tail.then(() => !this.closed)
  }

  /** The channel is gone: pending and later writes resolve false at once. */
  close(): void {
    this.closed = true
    this.release?.()
  }

  private writeNow(target: OutputTarget, chunk: Buffer): Promise<boolean> {
    const stream: Writable = target === 'stderr' ? this.channel.stderr : this.channel
    if (this.closed || !stream.writable || chunk.length === 0) return Promise.resolve(!this.closed)
    return new Promise<boolean>((resolve) => {
      const done = (): void => {
        if (this.release === done) this.release = undefined
        resolve(!this.closed)
      }
      // A write on a channel the client closed never calls back: close() releases it.
      this.release = done
      stream.write(chunk, done)
    })
  }
}
