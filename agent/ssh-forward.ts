/**
 * SSH port forwarding on one client connection, as sshd does it:
 * - `ssh -L`: a `direct-tcpip` channel connects to the host and port the
 *   client names, from inside the workspace;
 * - `ssh -R`: a `tcpip-forward` request listens inside the workspace, and
 *   each connection there opens a `forwarded-tcpip` channel to the client;
 *   `cancel-tcpip-forward` stops listening. Listeners bind to loopback
 *   whatever address is asked for (sshd's `GatewayPorts no`), and all of
 *   them close with the connection.
 */
import { connect, createServer, type Server, type Socket } from 'node:net'
import type { Connection, ServerChannel, TcpipBindInfo, TcpipRequestInfo } from 'ssh2'
import type { Logger } from '../sdk/logger.ts'
import { SECOND } from '../sdk/config.ts'

/** How long connecting to a `direct-tcpip` target may take, in ms. */
const CONNECT_TIMEOUT_MS = 10 * SECOND
/** How long a socket may take to flush after its channel closed, in ms. */
const LINGER_MS = 10 * SECOND

/**
 * Joins an SSH channel and a socket, with backpressure and half-close both
 * ways: the socket's end sends EOF on the channel once its data is out, the
 * client's EOF ends the socket's writing side, and the channel closes when
 * both directions are done. ssh2 closes a server channel as soon as its
 * writable side finishes, so EOF goes out with `eof()` rather than `end()`.
 */
export function joinChannel(channel: ServerChannel, socket: Socket): void {
  let socketEnding = false
  let socketEnded = false
  let channelEnded = false
  const maybeClose = (): void => {
    if (socketEnded && channelEnded) channel.close()
  }

  socket.setNoDelay(true)
  socket.pipe(channel, { end: false })
  socket.on('end', () => {
    socketEnding = true
    // An empty write calls back once every earlier chunk went to SSH.
    channel.write(Buffer.alloc(0), () => {
      channel.eof()
      socketEnded = true
      maybeClose()
    })
  })
  channel.pipe(socket)
  channel.on('end', () => {
    channelEnded = true
    maybeClose()
  })
  socket.on('error', () => channel.close())
  socket.on('close', () => {
    // A socket that closed without its EOF (a reset) ends the channel now.
    if (!socketEnding) channel.close()
  })
  channel.on('error', () => socket.destroy())
  channel.on('close', () => {
    // After the client's EOF, bytes already written still go out with the
    // socket's FIN; a channel that closed without EOF was cut off.
    if (!channelEnded) {
      socket.destroy()
      return
    }
    socket.end()
    setTimeout(() => socket.destroy(), LINGER_MS).unref()
  })
}

/** The loopback address a remote forward listens on for the address the client asked. */
export function loopbackFor(bindAddr: string): string {
  return bindAddr === '::1' || bindAddr === '::' || bindAddr === 'ip6-localhost'
    ? '::1'
    : '127.0.0.1'
}

interface RemoteForward {
  server: Server
  bindAddr: string
  bindPort: number
}

export interface ForwardingInit {
  log: Logger
}

/** Serves `ssh -L` and `ssh -R` on `client` until it closes. */
export function serveForwarding(client: Connection, init: ForwardingInit): void {
  const { log } = init
  const remotes: RemoteForward[] = []

  client.on('tcpip', (accept, reject, info: TcpipRequestInfo) => {
    const socket = connect({
      host: info.destIP,
      port: info.destPort,
      allowHalfOpen: true,
      timeout: CONNECT_TIMEOUT_MS,
    })
    const refuse = (why: string): void => {
      log.debug({ host: info.destIP, port: info.destPort, err: why }, 'direct-tcpip refused')
      socket.destroy()
      reject()
    }
    socket.once('timeout', () => refuse('timed out'))
    socket.once('error', (err) => refuse(err.message))
    socket.once('connect', () => {
      socket.removeAllListeners('timeout')
      socket.removeAllListeners('error')
      socket.setTimeout(0)
      const channel = accept()
      if (channel === undefined) {
        socket.destroy()
        return
      }
      log.debug({ host: info.destIP, port: info.destPort }, 'direct-tcpip opened')
      joinChannel(channel, socket)
    })
  })

  client.on('request', (accept, reject, name, info) => {
    if (name === 'tcpip-forward') {
      listenRemote(client, info as TcpipBindInfo, log).then(
        (forward) => {
          remotes.push(forward)
          accept?.(forward.bindPort)
        },
        (err: Error) => {
          log.debug(
            { port: (info as TcpipBindInfo).bindPort, err: err.message },
            'tcpip-forward refused',
          )
          reject?.()
        },
      )
    } else if (name === 'cancel-tcpip-forward') {
      const { bindAddr, bindPort } = info as TcpipBindInfo
      const i = remotes.findIndex((r) => r.bindAddr === bindAddr && r.bindPort === bindPort)
      if (i === -1) {
        reject?.()
        return
      }
      remotes.splice(i, 1)[0]!.server.close()
      accept?.()
    } else {
      reject?.()
    }
  })

  client.on('close', () => {
    for (const r of remotes) r.server.close()
    remotes.length = 0
  })
}

function listenRemote(
  client: Connection,
  info: TcpipBindInfo,
  log: Logger,
): Promise<RemoteForward> {
  return new Promise((resolve, reject) => {
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      socket.pause()
      const port = (server.address() as { port: number }).port
      client.forwardOut(
        info.bindAddr,
        port,
        socket.remoteAddress ?? '127.0.0.1',
        socket.remotePort ?? 0,
        (err, channel) => {
          if (err !== undefined) {
            log.debug({ port, err: err.message }, 'forwarded-tcpip refused by the client')
            socket.destroy()
            return
          }
          joinChannel(channel, socket)
          socket.resume()
        },
      )
    })
    server.once('error', reject)
    server.listen({ host: loopbackFor(info.bindAddr), port: info.bindPort }, () => {
      server.off('error', reject)
      server.on('error', (err) => log.debug({ err: err.message }, 'remote forward listener error'))
      const port = (server.address() as { port: number }).port
      log.debug({ port }, 'tcpip-forward listening')
      // The client matches forwarded-tcpip channels on the address it asked for.
      resolve({ server, bindAddr: info.bindAddr, bindPort: port })
    })
  })
}
