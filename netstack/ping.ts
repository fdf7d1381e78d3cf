/**
 * Mesh ping (`/coder-mesh/ping/1.0.0`, PING_PROTOCOL): round trips over one
 * stream, timed by the client. The agent serves it (agent/ping.ts); the CLI's
 * `ping` drives it through createPinger.
 *
 *   client                                  agent
 *   ticket frame (frames.ts)          ──►   checks it (serve.ts)
 *   payload                           ──►
 *                                     ◄──   the same payload, unchanged
 *   ... one payload after another, as many as the client likes ...
 *   FIN                               ──►
 *                                     ◄──   FIN
 *
 * A late echo (after its ping timed out) is recognised by its sequence
 * number and dropped, so it is never taken for the answer to a later ping.
 */
import type { Duplex } from 'node:stream'

export const PING_PAYLOAD_BYTES = 8 // payload: u64 BE sequence number, echoed unchanged

/** How long a ping waits for its echo, in ms. */
export const DEFAULT_PING_TIMEOUT = 5000

export interface PingOptions {
  /** Give up on this ping after this many ms; default DEFAULT_PING_TIMEOUT. */
  timeout?: number
  signal?: AbortSignal
}

export interface Pinger {
  /** Sends one payload; resolves with the round trip in ms, or rejects on timeout or a lost stream. */
  ping(options?: PingOptions): Promise<number>
  /** False once the stream failed or ended: open a new one. */
  isOpen(): boolean
  /** Ends the stream: a half-close; the agent answers with its own. */
  close(): void
}

/** Times round trips on a ping stream (already past its ticket frame). */
export function createPinger(duplex: Duplex): Pinger {
  let sequence = 0n
  let pending: Buffer = Buffer.alloc(0)
  let failure: Error | undefined
  const waiters = new Map<bigint, { resolve: (at: bigint) => void; reject: (e: Error) => void }>()

  const failAll = (err: Error): void => {
    failure ??= err
    for (const waiter of waiters.values()) waiter.reject(failure)
    waiters.clear()
  }
  duplex.on('data', (chunk: Buffer) => {
    const at = process.hrtime.bigint()
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    while (pending.length >= PING_PAYLOAD_BYTES) {
      const seq = pending.readBigUInt64BE(0)
      pending = pending.subarray(PING_PAYLOAD_BYTES)
      waiters.get(seq)?.resolve(at)
      waiters.delete(seq)
    }
  })
  duplex.on('error', (err: Error) => failAll(err))
  duplex.on('end', () => failAll(new Error('the agent ended the ping stream')))
  duplex.on('close', () => failAll(new Error('the ping stream closed')))

  return {
    ping(options = {}) {
      if (failure !== undefined) return Promise.reject(failure)
      if (options.signal?.aborted === true) return Promise.reject(options.signal.reason as Error)
      const seq = ++sequence
      const payload = Buffer.alloc(PING_PAYLOAD_BYTES)
      payload.writeBigUInt64BE(seq, 0)
      return new Promise<number>((resolve, reject) => {
        const timeout = options.timeout ?? DEFAULT_PING_TIMEOUT
        const done = (): void => {
          clearTimeout(timer)
          options.signal?.removeEventListener('abort', onAbort)
          waiters.delete(seq)
        }
        const onAbort = (): void => {
          done()
          reject(options.signal?.reason as Error)
        }
        const timer = setTimeout(() => {
          done()
          reject(new Error(`no answer in ${timeout} ms`))
        }, timeout)
        options.signal?.addEventListener('abort', onAbort, { once: true })
        const start = process.hrtime.bigint()
        waiters.set(seq, {
          resolve: (at) => {
            done()
            resolve(Number(at - start) / 1e6)
          },
          reject: (err) => {
            done()
            reject(err)
          },
        })
        duplex.write(payload)
      })
    },
    isOpen() {
      return failure === undefined
    },
    close() {
      duplex.end()
    },
  }
}
