/**
 * The one frame every agent protocol starts with: the client's ticket.
 *
 *   +--------+----------------+
 *   | u16 BE | ticket (UTF-8) |   length, then that many bytes
 *   +--------+----------------+
 *
 * After it, each protocol's own bytes follow (raw SSH for ssh, a u16 BE
 * port then raw bytes for tcp).
 */
import type { Duplex, Readable } from 'node:stream'
import { MeshError } from '../sdk/errors.ts'
import { MAX_TICKET_BYTES } from './constants.ts'

export function encodeTicketFrame(ticket: string): Buffer {
  const body = Buffer.from(ticket, 'utf8')
  if (body.length > MAX_TICKET_BYTES) throw new TypeError('ticket too long')
  const frame = Buffer.alloc(2 + body.length)
  frame.writeUInt16BE(body.length, 0)
  body.copy(frame, 2)
  return frame
}

export function writeTicketFrame(duplex: Duplex, ticket: string): void {
  duplex.write(encodeTicketFrame(ticket))
}

/**
 * Reads exactly `n` bytes, leaving anything after them unread. Every
 * listener it adds is gone once it settles: a stream read frame by frame
 * (or a ticket arriving in many small chunks) must not collect them.
 */
export function readExactly(readable: Readable, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      readable.off('readable', attempt)
      readable.off('end', onEnd)
      readable.off('close', onEnd)
      readable.off('error', onError)
    }
    const onEnd = (): void => {
      cleanup()
      reject(truncated())
    }
    const onError = (err: Error): void => {
      cleanup()
      reject(err)
    }
    function attempt(): void {
      const chunk = readable.read(n) as Buffer | null
      if (chunk !== null) {
        cleanup()
        // read(n) hands back fewer than n bytes only at the end of the stream.
        if (chunk.length < n) reject(truncated())
        else resolve(chunk)
        return
      }
      if (readable.readableEnded || readable.destroyed) onEnd()
    }

    readable.on('readable', attempt)
    readable.on('end', onEnd)
    readable.on('close', onEnd)
    readable.on('error', onError)
    attempt()
  })
}

export async function readTicketFrame(readable: Readable): Promise<string> {
  const length = (await readExactly(readable, 2)).readUInt16BE(0)
  if (length === 0 || length > MAX_TICKET_BYTES) {
    throw new MeshError('MESH_TICKET_INVALID', 'Mesh ticket refused: bad ticket frame.', {
      detail: `ticket frame of ${length} bytes`,
    })
  }
  return (await readExactly(readable, length)).toString('utf8')
}

function truncated(): MeshError {
  return new MeshError('MESH_TICKET_INVALID', 'Mesh ticket refused: stream ended early.', {
    detail: 'stream ended before the frame was complete',
  })
}
