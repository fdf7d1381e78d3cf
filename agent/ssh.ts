/**
 * The agent's SSH server: one ssh2 Server, fed each ticketed mesh stream as
 * a socket. The stream is already authorized (its ticket is bound to the
 * client's Noise-authenticated peer id), so SSH authentication accepts
 * every attempt, `none` included.
 *
 * Per connection: sessions (session.ts: shells, commands, sftp, agent
 * forwarding) and port forwarding both ways (ssh-forward.ts).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import ssh2, { type Connection } from 'ssh2'
import type { MeshStreamContext } from '../netstack/serve.ts'
import type { Logger } from '../sdk/logger.ts'
import { SshSession, type PtyModule } from './session.ts'
import { serveForwarding } from './ssh-forward.ts'

export const HOST_KEY_FILE = 'ssh_host_ed25519_key'

/** Server keepalive: a vanished client is dropped after about a minute. */
const KEEPALIVE_INTERVAL_MS = 15_000
const KEEPALIVE_COUNT_MAX = 4

function sshString(data: Buffer | string): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data) : data
  const len = Buffer.alloc(4)
  len.writeUInt32BE(body.length)
  return Buffer.concat([len, body])
}

/**
 * A new Ed25519 key as an OpenSSH private key file and its public key line.
 * Encoded here from node:crypto because ssh2 1.17's generateKeyPairSync
 * ('ed25519') writes, for about one key in eight, a file its own parser
 * then refuses as malformed.
 */
export function newHostKey(): { private: string; public: string } {
  const { privateKey } = generateKeyPairSync('ed25519')
  const jwk = privateKey.export({ format: 'jwk' })
  const seed = Buffer.from(jwk.d!, 'base64url')
  const pub = Buffer.from(jwk.x!, 'base64url')
  const publicBlob = Buffer.concat([sshString('ssh-ed25519'), sshString(pub)])
  const check = randomBytes(4)
  let secret = Buffer.concat([
    check,
    check,
    sshString('ssh-ed25519'),
    sshString(pub),
    sshString(Buffer.concat([seed, pub])),
    sshString('coder-mesh agent host key'),
  ])
  // Pad to the cipher block size (8 for "none") with 1, 2, 3, ...
  const padding = (8 - (secret.length % 8)) % 8
  secret = Buffer.concat([secret, Buffer.from(Array.from({ length: padding }, (_, i) => i + 1))])
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    Buffer.from([0, 0, 0, 1]),
    sshString(publicBlob),
    sshString(secret),
  ])
  const lines = body.toString('base64').match(/.{1,70}/g) ?? []
  return {
    private: `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`,
    public: `ssh-ed25519 ${publicBlob.toString('base64')}`,
  }
}

/**
 * Loads the Ed25519 host key kept in `dir`, or creates it there (OpenSSH
 * format, mode 0600, with a `.pub` beside it), so clients see the same host
 * key across restarts.
 */
export async function loadOrCreateHostKey(dir: string): Promise<string> {
  const file = join(dir, HOST_KEY_FILE)
  try {
    const existing = await readFile(file, 'utf8')
    const parsed = ssh2.utils.parseKey(existing)
    if (parsed instanceof Error) {
      throw new Error(`The SSH host key in ${file} is unreadable (${parsed.message}); remove it.`)
    }
    return existing
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const pair = newHostKey()
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const tmp = `${file}.${process.pid}.tmp`
  await writeFile(tmp, pair.private, { mode: 0o600 })
  await rename(tmp, file)
  await writeFile(`${file}.pub`, `${pair.public}\n`, { mode: 0o644 })
  return pair.private
}

/** Whether ssh2 loaded its native crypto binding (else it runs slower pure-JS ciphers). */
export function sshNativeCrypto(): boolean {
  try {
    const require = createRequire(import.meta.url)
    return (
      (require('ssh2/lib/protocol/crypto.js') as { bindingAvailable?: boolean })
        .bindingAvailable === true
    )
  } catch {
    return false
  }
}

async function loadPty(log: Logger): Promise<PtyModule | undefined> {
  try {
    const mod = (await import('@lydell/node-pty')) as PtyModule & { default?: PtyModule }
    return mod.default ?? mod
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'node-pty is unavailable: PTY requests are refused')
    return undefined
  }
}

interface OpenConnection {
  client: Connection
  sessions: Set<SshSession>
}

export interface SshServiceInit {
  /** The agent's folder, where the host key is kept. */
  dir: string
  log: Logger
}

export interface SshService {
  /** Runs an SSH server connection on a ticketed mesh stream. */
  handle(duplex: Duplex, context: MeshStreamContext): void
  /** Ends every connection and hangs up every session's processes. */
  close(): Promise<void>
}

/** Our version string: "OpenSSH*" is what OpenSSH's compat table matches on. */
export const SSH_IDENT = 'OpenSSH_9.0-compatible coder-mesh-agent'

export async function createSshService(init: SshServiceInit): Promise<SshService> {
  const log = init.log
  const hostKey = await loadOrCreateHostKey(init.dir)
  const pty = await loadPty(log)
  log.debug({ native_crypto: sshNativeCrypto(), pty: pty !== undefined }, 'ssh server ready')

  const server = new ssh2.Server({
    hostKeys: [hostKey],
    // OpenSSH clients turn on their OpenSSH-only protocol extensions by the
    // server's version string; the one that matters here is eow@openssh.com
    // (the client's reader went away; see session.ts).
    ident: SSH_IDENT,
    keepaliveInterval: KEEPALIVE_INTERVAL_MS,
    keepaliveCountMax: KEEPALIVE_COUNT_MAX,
  })
  const streams = new WeakMap<object, MeshStreamContext>()
  const connections = new Set<OpenConnection>()
  let closed = false

  server.on('connection', (client) => {
    const sock = (client as unknown as { _sock?: object })._sock
    const context = sock === undefined ? undefined : streams.get(sock)
    const connLog = context?.log ?? log
    const open: OpenConnection = { client, sessions: new Set() }
    connections.add(open)

    client.on('authentication', (ctx) => ctx.accept())
    client.on('ready', () => connLog.debug({ user: context?.claims.user }, 'ssh connection ready'))
    client.on('session', (accept) => {
      const session = accept()
      open.sessions.add(new SshSession(session, { log: connLog, pty, client }))
    })
    serveForwarding(client, { log: connLog })
    client.on('error', (err: Error) => connLog.debug({ err: err.message }, 'ssh connection error'))
    client.on('close', () => {
      connections.delete(open)
      for (const session of open.sessions) void session.terminate()
      connLog.debug('ssh connection closed')
    })
  })

  return {
    handle(duplex, context) {
      if (closed) {
        duplex.destroy()
        return
      }
      streams.set(duplex, context)
      // ssh2 needs only a Duplex: it reads, writes, ends and watches close.
      // Once the client's side of the byte stream ends (an OpenSSH
      // ProxyCommand whose ssh died, say), no request can come any more:
      // ssh2 (patched, see patches/) then ends ours too, as sshd would, and
      // hangs up the sessions.
      server.injectSocket(duplex as unknown as Socket)
      // The client's EOF can come in the same read as its ticket, and then
      // 'end' was emitted before ssh2 was listening: without this, ssh2
      // would send its version line and wait for the client for ever.
      if (duplex.readableEnded) duplex.emit('end')
    },
    async close() {
      closed = true
      const terminations: Promise<void>[] = []
      for (const open of connections) {
        for (const session of open.sessions) terminations.push(session.terminate())
        try {
          open.client.end()
        } catch {
          // Already gone.
        }
      }
      await Promise.all(terminations)
    },
  }
}
