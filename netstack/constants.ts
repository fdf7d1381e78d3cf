/** Protocol ids spoken on the mesh: `/coder-mesh/<name>/1.0.0`. */
export const SSH_PROTOCOL = '/coder-mesh/ssh/1.0.0'
/** Port forward: ticket frame, then a u16 target port, then raw bytes. */
export const TCP_PROTOCOL = '/coder-mesh/tcp/1.0.0'
export const PTY_PROTOCOL = '/coder-mesh/pty/1.0.0'
export const PING_PROTOCOL = '/coder-mesh/ping/1.0.0'
export const SPEEDTEST_PROTOCOL = '/coder-mesh/speedtest/1.0.0'
export const COORD_PROTOCOL = '/coder-mesh/coord/1.0.0'

/** Every protocol an agent serves behind a ticket check. */
export const AGENT_PROTOCOLS = [
  SSH_PROTOCOL,
  TCP_PROTOCOL,
  PTY_PROTOCOL,
  PING_PROTOCOL,
  SPEEDTEST_PROTOCOL,
] as const

/**
 * Yamux grows a stream's window to this many bytes. A stream's read buffer
 * must hold at least one full window, or a slow local reader makes yamux
 * abort the stream (the stock 4 MiB buffer under a 16 MiB window does).
 */
export const STREAM_WINDOW_BYTES = 16 * 1024 * 1024

/** Streams per protocol per connection: above browser and test concurrency. */
export const MAX_STREAMS_PER_PROTOCOL = 1024

/** Longest ticket frame accepted, in bytes. */
export const MAX_TICKET_BYTES = 4096
