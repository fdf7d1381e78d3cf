/**
 * Reading the fixed-size frames of the agent protocols (forward.ts,
 * ping.ts, speedtest.ts) after the ticket frame.
 */
import type { Readable } from 'node:stream'
import { MeshError } from '../sdk/errors.ts'
import { readExactly } from './frames.ts'

/**
 * Reads exactly `bytes` bytes, leaving what follows unread (for a pipe or
 * another frame). A stream that ends or fails first is MESH_CONNECT_FAILED
 * naming the `what` that was missing: after the ticket frame, the likely
 * cause is a refused ticket or an agent going away, not a bad ticket frame.
 */
export async function readFrame(readable: Readable, bytes: number, what: string): Promise<Buffer> {
  try {
    return await readExactly(readable, bytes)
  } catch (err) {
    throw new MeshError('MESH_CONNECT_FAILED', `The stream ended before the ${what}.`, {
      detail: `expected ${bytes} bytes of ${what}: ${(err as Error).message}`,
      cause: err,
    })
  }
}
