/**
 * The agent's side of mesh ping (wire format in netstack/ping.ts): every
 * byte is echoed as it comes, with backpressure, and the client's FIN is
 * answered with ours.
 */
import { finished } from 'node:stream/promises'
import type { MeshStreamHandler } from '../netstack/serve.ts'

/** The PING_PROTOCOL handler, for serveMeshProtocol. */
export function createPingHandler(): MeshStreamHandler {
  return async function ping(duplex) {
    duplex.on('error', () => undefined)
    duplex.pipe(duplex)
    // A client that goes away resets the stream: nothing to report.
    await finished(duplex).catch(() => undefined)
  }
}
