/**
 * Mesh speed test (`/coder-mesh/speedtest/1.0.0`, SPEEDTEST_PROTOCOL): bulk
 * bytes one way over one stream, for a duration the client asks for. The
 * agent serves it (agent/speedtest.ts); the CLI's `speedtest` runs one
 * stream each way through speedtestStream.
 *
 *   client                                  agent
 *   ticket frame (frames.ts)          ──►   checks it (serve.ts)
 *   request                           ──►
 *   upload:
 *     bytes, for the duration         ──►   counts them
 *     FIN                             ──►
 *                                     ◄──   total
 *                                     ◄──   FIN
 *   download:
 *     FIN (any time after the request)──►
 *                                     ◄──   bytes, for the duration
 *                                     ◄──   FIN
 *
 * The agent caps the duration at MAX_SPEEDTEST_MS and resets an upload that
 * runs SPEEDTEST_GRACE_MS past it. Payload bytes are opaque (random, so no
 * layer can compress them). The client times each direction from sending
 * the request to the total (upload) or the FIN (download), so bytes still
 * in buffers when the clock stops do not count.
 */
import { randomBytes } from 'node:crypto'
import type { Duplex } from 'node:stream'
import { MeshError } from '../sdk/errors.ts'
import { readFrame } from './wire.ts'

export const SPEEDTEST_REQUEST_BYTES = 5 // request: u8 direction, u32 BE duration in ms
export const SPEEDTEST_UPLOAD = 0 // direction: the client sends, the agent counts
export const SPEEDTEST_DOWNLOAD = 1 // direction: the agent sends
export const SPEEDTEST_TOTAL_BYTES = 8 // upload answer: u64 BE bytes the agent received

/** Longest run the agent grants one direction, in ms. */
export const MAX_SPEEDTEST_MS = 30_000
/** How long past its duration an upload may run before the agent resets it, in ms. */
export const SPEEDTEST_GRACE_MS = 10_000
/** Size of each write, in bytes. */
export const SPEEDTEST_CHUNK_BYTES = 64 * 1024

export type SpeedtestDirection = 'upload' | 'download'

export interface SpeedtestRequest {
  direction: SpeedtestDirection
  /** How long to send, in ms (1 to MAX_SPEEDTEST_MS). */
  durationMs: number
}

export interface SpeedtestResult {
  direction: SpeedtestDirection
  /** Bytes that arrived at the other end. */
  bytes: number
  /** Time from the request to the last byte, in ms. */
  ms: number
}

export function encodeSpeedtestRequest(request: SpeedtestRequest): Buffer {
  const ms = Math.round(request.durationMs)
  if (ms < 1 || ms > MAX_SPEEDTEST_MS) throw new TypeError(`bad speed test duration ${ms} ms`)
  const frame = Buffer.alloc(SPEEDTEST_REQUEST_BYTES)
  frame.writeUInt8(request.direction === 'upload' ? SPEEDTEST_UPLOAD : SPEEDTEST_DOWNLOAD, 0)
  frame.writeUInt32BE(ms, 1)
  return frame
}

/** Reads the request; the duration comes back capped to 1..MAX_SPEEDTEST_MS. */
export async function readSpeedtestRequest(duplex: Duplex): Promise<SpeedtestRequest> {
  const frame = await readFrame(duplex, SPEEDTEST_REQUEST_BYTES, 'speed test request')
  const direction = frame.readUInt8(0)
  if (direction !== SPEEDTEST_UPLOAD && direction !== SPEEDTEST_DOWNLOAD) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Unknown speed test direction ${direction}.`)
  }
  return {
    direction: direction === SPEEDTEST_UPLOAD ? 'upload' : 'download',
    durationMs: Math.min(MAX_SPEEDTEST_MS, Math.max(1, frame.readUInt32BE(1))),
  }
}

let payload: Buffer | undefined

/** One chunk of random bytes, written again and again (never modified). */
export function speedtestChunk(): Buffer {
  payload ??= randomBytes(SPEEDTEST_CHUNK_BYTES)
  return payload
}

/**
 * Writes chunks to `duplex` until `deadline` (a performance.now() value),
 * waiting for drain whenever the stream is full; resolves with the bytes
 * written, or rejects when the stream fails.
 */
export async function sendUntil(duplex: Duplex, deadline: number): Promise<number> {
  const chunk = speedtestChunk()
  let sent = 0
  while (performance.now() < deadline) {
    if (duplex.destroyed || duplex.writableEnded) throw new Error('the stream closed')
    sent += chunk.length
    if (!duplex.write(chunk)) await drained(duplex)
  }
  return sent
}

/** Resolves on the stream's next 'drain'; rejects if it closes or fails first. */
function drained(duplex: Duplex): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      duplex.off('drain', onDrain)
      duplex.off('close', onClose)
      duplex.off('error', settle)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = (): void => settle()
    const onClose = (): void => settle(new Error('the stream closed'))
    duplex.on('drain', onDrain)
    duplex.on('close', onClose)
    duplex.on('error', settle)
  })
}

/** Runs one direction of a speed test on a stream already past its ticket frame. */
export async function speedtestStream(
  duplex: Duplex,
  request: SpeedtestRequest,
): Promise<SpeedtestResult> {
  // Failures surface through the reads and writes below, not as events.
  duplex.on('error', () => undefined)
  const start = performance.now()
  duplex.write(encodeSpeedtestRequest(request))

  if (request.direction === 'upload') {
    await sendUntil(duplex, start + request.durationMs)
    duplex.end()
    const total = await readFrame(duplex, SPEEDTEST_TOTAL_BYTES, 'speed test total')
    const ms = performance.now() - start
    duplex.resume()
    return { direction: 'upload', bytes: Number(total.readBigUInt64BE(0)), ms }
  }

  duplex.end()
  const bytes = await countUntilEnd(duplex)
  return { direction: 'download', bytes, ms: performance.now() - start }
}

/**
 * Reads and drops everything until the remote's FIN; resolves with the byte
 * count, rejects if the stream fails or closes first. Unlike `for await`,
 * it leaves the writable side alone (async iteration destroys the stream
 * when it ends, which would reset a half-open stream).
 */
export function countUntilEnd(duplex: Duplex): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length
    }
    const settle = (err?: Error): void => {
      duplex.off('data', onData)
      duplex.off('end', onEnd)
      duplex.off('error', settle)
      duplex.off('close', onClose)
      if (err === undefined) resolve(bytes)
      else reject(err)
    }
    const onEnd = (): void => settle()
    const onClose = (): void => settle(new Error('the stream closed before its end'))
    duplex.on('data', onData)
    duplex.on('end', onEnd)
    duplex.on('error', settle)
    duplex.on('close', onClose)
  })
}

/** Throughput in MB/s (10^6 bytes a second). */
export function megabytesPerSecond(result: SpeedtestResult): number {
  return result.ms <= 0 ? 0 : result.bytes / 1e6 / (result.ms / 1000)
}
