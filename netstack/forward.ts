/**
 * Port forwarding on the mesh (`/coder-mesh/tcp/1.0.0`, TCP_PROTOCOL): one
 * stream per forwarded TCP connection. The agent serves it (agent/forward.ts)
 * and the CLI dials it (client/port-forward.ts).
 *
 *   client                                      agent
 *   ticket frame (frames.ts)              ──►   checks it (serve.ts)
 *   request                               ──►   connects to 127.0.0.1:PORT, else [::1]:PORT
 *                                         ◄──   status
 *   CONNECTED: raw bytes both ways        ◄─►   raw bytes to and from the target socket
 *   FIN (the local socket's EOF)          ──►   ends the target socket's write side
 *                                         ◄──   FIN (the target's EOF)
 *   FAILED: the agent ends the stream; the client closes the local socket at once
 *
 * A stream reset on either side resets the socket at the other end. Any
 * bytes the client sends after the request and before the status are kept
 * and delivered once the target is connected.
 */
import { MeshError } from '../sdk/errors.ts'
import type { Readable } from 'node:stream'
import { readFrame } from './wire.ts'

export const FORWARD_REQUEST_BYTES = 2 // request: u16 BE target port, 1-65535
export const FORWARD_STATUS_BYTES = 1 // status: u8, FORWARD_CONNECTED or FORWARD_FAILED
export const FORWARD_CONNECTED = 0 // status: the agent connected to the target; raw bytes follow
export const FORWARD_FAILED = 1 // status: refused or unreachable; the stream then ends

export const MIN_PORT = 1
export const MAX_PORT = 65_535

/** True for a TCP port a forward may target: an integer 1-65535. */
export function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= MIN_PORT && value <= MAX_PORT
}

export function encodeForwardRequest(port: number): Buffer {
  if (!isPort(port)) throw new TypeError(`not a TCP port: ${port}`)
  const frame = Buffer.alloc(FORWARD_REQUEST_BYTES)
  frame.writeUInt16BE(port, 0)
  return frame
}

/** Reads the request; MESH_BAD_ARGUMENT for port 0. */
export async function readForwardRequest(readable: Readable): Promise<number> {
  const port = (await readFrame(readable, FORWARD_REQUEST_BYTES, 'forward request')).readUInt16BE(0)
  if (!isPort(port)) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Cannot forward to port ${port}.`)
  }
  return port
}

export function encodeForwardStatus(
  status: typeof FORWARD_CONNECTED | typeof FORWARD_FAILED,
): Buffer {
  return Buffer.from([status])
}

/** Reads the status byte: true when the agent reached the target. */
export async function readForwardStatus(readable: Readable): Promise<boolean> {
  const status = (await readFrame(readable, FORWARD_STATUS_BYTES, 'forward status'))[0]
  if (status !== FORWARD_CONNECTED && status !== FORWARD_FAILED) {
    throw new MeshError('MESH_CONNECT_FAILED', 'The agent answered the forward oddly.', {
      detail: `unknown forward status ${String(status)}`,
    })
  }
  return status === FORWARD_CONNECTED
}
