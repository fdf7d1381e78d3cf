/**
 * SSH agent forwarding (`ssh -A`) for one session: an `auth-agent-req`
 * makes a unix socket in a private folder (mode 0700, as sshd's
 * /tmp/ssh-XXXX), its path becomes the session's SSH_AUTH_SOCK, and every
 * connection to it opens an `auth-agent@openssh.com` channel to the client,
 * whose ssh joins it to the user's ssh-agent. The folder goes when the
 * session ends.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Connection, ServerChannel } from 'ssh2'
import type { Logger } from '../sdk/logger.ts'
import { joinChannel } from './ssh-forward.ts'

/** ssh2's own channel sizes (lib/Channel.js), used for the channels it opens. */
const CHANNEL_WINDOW = 2 * 1024 * 1024
const CHANNEL_PACKET = 32 * 1024

type OpenCallback = ((err: Error | undefined, channel: ServerChannel) => void) & { type?: string }

interface ConnectionInternals {
  _chanMgr: { add(cb: OpenCallback): number }
  _protocol: { openssh_authAgent(chan: number, window: number, packet: number): void }
}

/**
 * Opens an `auth-agent@openssh.com` channel to the client. ssh2's server
 * has the wire message (Protocol#openssh_authAgent) but no public method,
 * so this does what its forwardOut() does for `forwarded-tcpip`.
 */
export function openAuthAgentChannel(client: Connection): Promise<ServerChannel> {
  return new Promise((resolve, reject) => {
    const c = client as unknown as ConnectionInternals
    const cb: OpenCallback = (err, channel) => (err === undefined ? resolve(channel) : reject(err))
    cb.type = 'auth-agent@openssh.com'
    const local = c._chanMgr.add(cb)
    if (local === -1) {
      reject(new Error('no free channels'))
      return
    }
    c._protocol.openssh_authAgent(local, CHANNEL_WINDOW, CHANNEL_PACKET)
  })
}

/** A session's forwarded agent socket. */
export interface AgentSocket {
  /** The SSH_AUTH_SOCK path. */
  path: string
  /** Stops listening and removes the folder. */
  close(): Promise<void>
}

/** Listens for the session's agent clients; rejects when no socket can be made. */
export async function listenAuthAgent(client: Connection, log: Logger): Promise<AgentSocket> {
  // mkdtemp makes the folder 0700: only the session's user reaches the socket.
  const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-ssh-'))
  const path = join(dir, 'agent.sock')
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.pause()
    openAuthAgentChannel(client).then(
      (channel) => {
        joinChannel(channel, socket)
        socket.resume()
      },
      (err: Error) => {
        log.debug({ err: err.message }, 'the client refused an agent channel')
        socket.destroy()
      },
    )
  })
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    })
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
  server.on('error', (err) => log.debug({ err: err.message }, 'agent socket error'))
  let closing: Promise<void> | undefined
  return {
    path,
    close() {
      // New connections stop now; ones already open run until they end.
      server.close()
      closing ??= rm(dir, { recursive: true, force: true })
      return closing
    },
  }
}
