/**
 * A minimal STUN server (RFC 5389 Binding only): it tells a peer the
 * address and port its UDP packets arrive from, which behind a NAT is the
 * NAT's public mapping. ICE needs that (a server-reflexive candidate) for
 * WebRTC to punch through NATs. No authentication, no other methods; the
 * answer reveals nothing the asker does not already send.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'

const BINDING_REQUEST = 0x0001
const BINDING_SUCCESS = 0x0101
const MAGIC_COOKIE = 0x2112a442
const XOR_MAPPED_ADDRESS = 0x0020
const HEADER_BYTES = 20

export interface StunServer {
  port: number
  close(): Promise<void>
}

/** The Binding success response to `request` from `from`, or undefined if it is no Binding request. */
export function stunBindingResponse(request: Buffer, from: RemoteInfo): Buffer | undefined {
  if (request.length < HEADER_BYTES) return undefined
  if (request.readUInt16BE(0) !== BINDING_REQUEST) return undefined
  if (request.readUInt32BE(4) !== MAGIC_COOKIE) return undefined
  if (request.readUInt16BE(2) !== request.length - HEADER_BYTES) return undefined

  if (from.family !== 'IPv4') return undefined

  const res = Buffer.alloc(HEADER_BYTES + 12)
  res.writeUInt16BE(BINDING_SUCCESS, 0)
  res.writeUInt16BE(12, 2)
  res.writeUInt32BE(MAGIC_COOKIE, 4)
  request.copy(res, 8, 8, HEADER_BYTES) // transaction id
  res.writeUInt16BE(XOR_MAPPED_ADDRESS, 20)
  res.writeUInt16BE(8, 22)
  res.writeUInt8(0, 24)
  res.writeUInt8(0x01, 25) // IPv4
  res.writeUInt16BE(from.port ^ (MAGIC_COOKIE >>> 16), 26)
  const octets = from.address.split('.').map(Number)
  for (let i = 0; i < 4; i++) res.writeUInt8((octets[i] ?? 0) ^ res[4 + i]!, 28 + i)
  return res
}

/** Serves STUN Binding on UDP `host`:`port` (IPv4; port 0 picks one). */
export async function startStunServer(
  options: { host?: string; port?: number } = {},
): Promise<StunServer> {
  const host = options.host ?? '0.0.0.0'
  const socket: Socket = createSocket('udp4')
  socket.on('message', (msg, rinfo) => {
    const res = stunBindingResponse(msg, rinfo)
    if (res !== undefined) socket.send(res, rinfo.port, rinfo.address)
  })
  socket.on('error', () => undefined)
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(options.port ?? 0, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  return {
    port: socket.address().port,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  }
}
