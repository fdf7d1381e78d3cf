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
import { once } from 'node:events'
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

/** Reads exactly `n` bytes, leaving anything after them unread. */
export async function readExactly(readable: Readable, n: number): Promise<Buffer> {
  for (;;) {
    const chunk = readable.read(n) as Buffer | null
    if (chunk !== null) {
      if (chunk.length < n) throw truncated()
      return chunk
    }
    if (readable.readableEnded || readable.destroyed) throw truncated()
    await Promise.race([once(readable, 'readable'), once(readable, 'end'), once(readable, 'close')])
  }
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
