/**
 * The link between a running `coder-mesh connect` and the CLI's other
 * commands on the same machine, so that `coder-mesh ssh` (and OpenSSH
 * through `config-ssh`'s ProxyCommand) reuses the connection `connect`
 * already holds instead of starting a libp2p node, asking for a ticket and
 * dialing the agent every time.
 *
 * It is a Unix socket, `connect.sock` in the CLI's config folder, readable
 * only by its owner (0600, in the 0700 folder the session lives in): the
 * socket hands out streams in the name of the user's session, so it gets
 * the same protection as the session file. Nothing here loads libp2p: a
 * command that finds the link never does.
 *
 *   command                                       connect
 *   request: one JSON line (LinkRequest)    ──►
 *                                           ◄──   {"accepted":true}, at once
 *                                           ◄──   reply: one JSON line (LinkReply)
 *   ok: raw bytes of the stream both ways   ◄─►   the mesh stream to the agent
 *
 * The first line comes at once from a `connect` that is alive; the reply
 * only once it has reached the workspace, which may take a while. A link
 * that does not even accept is from a `connect` that hangs, and is not used.
 *
 * The request names the coordinator and the login (a digest of the session
 * token, never the token): a `connect` started under another login, or
 * logged in to another coordinator, is not used, so a command run with
 * `CODER_MESH_TOKEN`, or after a new `login`, acts as who it says it is.
 */
import { createHash } from 'node:crypto'
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'
import { configDir } from '../sdk/config.ts'
import { ERROR_STATUS, MeshError, type ErrorCode } from '../sdk/errors.ts'

export const LINK_SOCKET = 'connect.sock'
export const LINK_VERSION = 2
/** Longest request or reply line, in bytes. */
export const MAX_LINK_LINE = 4096
/** A link that does not accept a request within this long is not used, in ms. */
const LINK_ACCEPT_MS = 5_000
/**
 * A link that accepted but does not reply within this long is not used, in
 * ms. Long, because `connect` replies once it has reached the workspace, and
 * an agent that is starting takes a while.
 */
const LINK_REPLY_MS = 120_000
/** The line `connect` sends as soon as it has read a request it serves. */
export const LINK_ACCEPTED = '{"accepted":true}'

/** The streams the link carries: the agent's SSH server. */
export type LinkProtocol = 'ssh'

export interface LinkRequest {
  version: typeof LINK_VERSION
  /** The coordinator the asking command is logged in to. */
  url: string
  /** Who the asking command is logged in as: sessionDigest() of its token. */
  session: string
  /** `NAME` or `OWNER/NAME`. */
  workspace: string
  protocol: LinkProtocol
}

export type LinkReply =
  { ok: true; path: string } | { ok: false; code: ErrorCode; message: string; detail?: string }

/**
 * What the link compares to tell two logins apart: a digest of the token,
 * so the token itself never travels, and no log of a request holds it.
 */
export function sessionDigest(token: string | undefined): string {
  if (token === undefined) return ''
  return createHash('sha256').update('coder-mesh link\0').update(token).digest('hex').slice(0, 32)
}

/** Where the link of the config folder `dir` lives. */
export function linkPath(dir: string = configDir()): string {
  return join(dir, LINK_SOCKET)
}

export interface LinkedStream {
  socket: Socket
  /** The path of connect's connection to the agent: `direct (tcp)`, ... */
  path: string
}

/**
 * Asks a running `connect` for a stream. Undefined when none runs for this
 * config folder, or it serves another login or coordinator, or its login
 * is no longer accepted; the caller then connects by itself. Throws the
 * error `connect` met reaching the workspace.
 */
export async function openLinkedStream(
  request: Omit<LinkRequest, 'version'>,
  dir?: string,
): Promise<LinkedStream | undefined> {
  let socket: Socket
  try {
    socket = await connectUnix(linkPath(dir))
  } catch {
    // No link (ENOENT), a stale one (ECONNREFUSED), or one we may not use.
    return undefined
  }

  const giveUp = (): void => void socket.destroy(new Error('connect did not answer'))
  socket.setTimeout(LINK_ACCEPT_MS, giveUp)
  socket.write(JSON.stringify({ version: LINK_VERSION, ...request }) + '\n')
  let reply: LinkReply | undefined
  try {
    let line = await readLine(socket)
    if (line === LINK_ACCEPTED) {
      socket.setTimeout(LINK_REPLY_MS, giveUp)
      line = await readLine(socket)
    }
    reply = parseReply(line)
  } catch {
    reply = undefined
  }
  socket.setTimeout(0)

  if (reply === undefined) {
    socket.destroy()
    return undefined
  }
  if (!reply.ok) {
    socket.destroy()
    if (reply.code === 'MESH_LINK_OTHER_SESSION' || reply.code === 'MESH_UNAUTHENTICATED') {
      return undefined
    }
    throw new MeshError(reply.code, reply.message, { detail: reply.detail })
  }
  return { socket, path: reply.path }
}

/** Whether a `connect` answers on the link of `dir`. */
export async function linkAnswers(dir?: string): Promise<boolean> {
  try {
    const socket = await connectUnix(linkPath(dir))
    socket.destroy()
    return true
  } catch {
    return false
  }
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path, allowHalfOpen: true })
    socket.once('connect', () => {
      socket.off('error', reject)
      resolve(socket)
    })
    socket.once('error', reject)
  })
}

/**
 * Reads one `\n`-terminated line of at most MAX_LINK_LINE bytes; what
 * follows it stays in the socket for the next reader.
 */
export function readLine(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let length = 0
    const cleanup = (): void => {
      socket.off('readable', onReadable)
      socket.off('end', onEnd)
      socket.off('error', onError)
      socket.off('close', onEnd)
    }
    const onEnd = (): void => {
      cleanup()
      reject(new Error('the link closed before a whole line'))
    }
    const onError = (err: Error): void => {
      cleanup()
      reject(err)
    }
    const onReadable = (): void => {
      let chunk: Buffer | null
      while ((chunk = socket.read() as Buffer | null) !== null) {
        const newline = chunk.indexOf(0x0a)
        if (newline === -1) {
          chunks.push(chunk)
          length += chunk.length
          if (length > MAX_LINK_LINE) onError(new Error('the link line is too long'))
          continue
        }
        if (length + newline > MAX_LINK_LINE) {
          onError(new Error('the link line is too long'))
          return
        }
        chunks.push(chunk.subarray(0, newline))
        if (newline + 1 < chunk.length) socket.unshift(chunk.subarray(newline + 1))
        cleanup()
        resolve(Buffer.concat(chunks).toString('utf8'))
        return
      }
    }
    socket.on('readable', onReadable)
    socket.once('end', onEnd)
    socket.once('close', onEnd)
    socket.once('error', onError)
  })
}

function parseReply(line: string): LinkReply | undefined {
  const value: unknown = JSON.parse(line)
  if (typeof value !== 'object' || value === null) return undefined
  const reply = value as Record<string, unknown>
  if (reply.ok === true && typeof reply.path === 'string') return { ok: true, path: reply.path }
  if (
    reply.ok === false &&
    typeof reply.code === 'string' &&
    reply.code in ERROR_STATUS &&
    typeof reply.message === 'string'
  ) {
    return {
      ok: false,
      code: reply.code as ErrorCode,
      message: reply.message,
      detail: typeof reply.detail === 'string' ? reply.detail : undefined,
    }
  }
  return undefined
}

/** Parses a request line; undefined for anything that is not one. */
export function parseRequest(line: string): LinkRequest | undefined {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null) return undefined
  const request = value as Record<string, unknown>
  if (
    request.version !== LINK_VERSION ||
    typeof request.url !== 'string' ||
    typeof request.session !== 'string' ||
    typeof request.workspace !== 'string' ||
    request.protocol !== 'ssh'
  ) {
    return undefined
  }
  return {
    version: LINK_VERSION,
    url: request.url,
    session: request.session,
    workspace: request.workspace,
    protocol: request.protocol,
  }
}
