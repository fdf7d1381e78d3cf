/**
 * The agent's side of the mesh speed test (wire format in
 * netstack/speedtest.ts): count an upload and answer its total, or send a
 * download for the requested duration.
 */
import {
  countUntilEnd,
  readSpeedtestRequest,
  sendUntil,
  SPEEDTEST_GRACE_MS,
  SPEEDTEST_TOTAL_BYTES,
} from '../netstack/speedtest.ts'
import type { MeshStreamHandler } from '../netstack/serve.ts'

/** The SPEEDTEST_PROTOCOL handler, for serveMeshProtocol. */
export function createSpeedtestHandler(): MeshStreamHandler {
  return async function speedtest(duplex, { log }) {
    // Failures surface through the reads and writes below, not as events.
    duplex.on('error', () => undefined)
    const request = await readSpeedtestRequest(duplex)
    const started = performance.now()

    if (request.direction === 'upload') {
      const timer = setTimeout(
        () => duplex.destroy(new Error('upload ran past its duration')),
        request.durationMs + SPEEDTEST_GRACE_MS,
      )
      const bytes = await countUntilEnd(duplex).finally(() => clearTimeout(timer))
      const total = Buffer.alloc(SPEEDTEST_TOTAL_BYTES)
      total.writeBigUInt64BE(BigInt(bytes), 0)
      duplex.end(total)
      log.debug({ bytes, ms: Math.round(performance.now() - started) }, 'speed test upload')
      return
    }

    // Whatever the client sends during a download is dropped; its FIN is kept.
    duplex.resume()
    const bytes = await sendUntil(duplex, started + request.durationMs)
    duplex.end()
    log.debug({ bytes, ms: Math.round(performance.now() - started) }, 'speed test download')
  }
}
