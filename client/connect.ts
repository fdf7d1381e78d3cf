/**
 * `coder-mesh connect`: stays on the mesh until stopped, and offers it two
 * ways:
 *
 * - A SOCKS5 proxy (default 127.0.0.1:1080) that resolves `NAME.coder-mesh`
 *   (and `NAME.OWNER.coder-mesh` for another user's workspace): a
 *   connection to port P of such a host is carried to port P on the
 *   workspace's loopback, as `port-forward` would, except port 22, which is
 *   the agent's SSH server. Any other host is refused: this is not a way out
 *   to the internet.
 * - The link (connect-link.ts), which `coder-mesh ssh` and OpenSSH through
 *   `config-ssh` use to skip their own set-up.
 *
 * One connection per workspace, opened on first use and kept until connect
 * stops (mesh-client.ts renews its ticket and dials again after a loss).
 * Known shortcoming: the SOCKS library (@pondwader/socks5-server) is lax
 * where RFC 1928 is strict: it takes a request whose version byte is not 5,
 * leaves unknown commands and address types without the 07 and 08 replies,
 * and answers BIND and UDP ASSOCIATE with a two-byte reply. Clients see a
 * failure either way; none of it reaches past our own handler's checks.
 *
 * Known shortcoming: a workspace used once keeps its connection, and its
 * ticket renewed, for as long as connect runs; nothing closes idle ones.
 *
 * Anyone who can reach the SOCKS port can reach the workspaces in the
 * user's name, as with any local SOCKS proxy: it listens on loopback unless
 * told otherwise, and the link is a socket only the user may open.
 */
import { Socks5Server } from '@pondwader/socks5-server'
import { chmod, lstat, unlink } from 'node:fs/promises'
import { createServer, isIP, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { bridge } from '../netstack/bridge.ts'
import { MAX_STREAMS_PER_PROTOCOL, SSH_PROTOCOL, TCP_PROTOCOL } from '../netstack/constants.ts'
import { encodeForwardRequest, isPort, readForwardStatus } from '../netstack/forward.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import { SECOND } from '../sdk/config.ts'
import { isMeshError, MeshError, type ErrorCode } from '../sdk/errors.ts'
import { nameProblem } from '../sdk/names.ts'
import {
  LINK_ACCEPTED,
  linkAnswers,
  linkPath,
  parseRequest,
  readLine,
  sessionDigest,
  type LinkReply,
} from './connect-link.ts'
import {
  openWorkspaceMesh,
  viaPath,
  type MeshPaths,
  type MeshStream,
  type WorkspaceMesh,
} from './mesh-client.ts'
import { notice, printable, write } from './output.ts'
import { addressProblem, formatHostPort, listen } from './port-forward.ts'
import { ensureConfigDir } from './session.ts'
import { Slots } from './slots.ts'

export const DEFAULT_SOCKS_ADDRESS = '127.0.0.1:1080'
/** The domain the proxy resolves: `NAME.coder-mesh`, `NAME.OWNER.coder-mesh`. */
export const MESH_DOMAIN = 'coder-mesh'
/** The port that means the agent's SSH server rather than the workspace's port 22. */
export const SSH_PORT = 22
/** A SOCKS client must finish its request within this long, in ms. */
const SOCKS_HANDSHAKE_MS = 10 * SECOND
/** A link client must send its request line within this long, in ms. */
const LINK_REQUEST_MS = 10 * SECOND
/**
 * The longest path a Unix socket can have on Linux, in bytes: sun_path
 * holds 108 with the terminating NUL.
 */
const MAX_SOCKET_PATH = 107

/** SOCKS5 reply codes (RFC 1928) by name, as the SOCKS library takes them. */
type SocksStatus =
  | 'REQUEST_GRANTED'
  | 'GENERAL_FAILURE'
  | 'CONNECTION_NOT_ALLOWED'
  | 'HOST_UNREACHABLE'
  | 'CONNECTION_REFUSED'

export interface ConnectOptions {
  socks: { host: string; port: number }
  paths?: MeshPaths
  /** The CLI's config folder: where the link is made. */
  configDir: string
  signal: AbortSignal
}

/**
 * Parses `--socks`: `PORT`, `HOST:PORT` or `[IPv6]:PORT`; port 0 picks a
 * free one (printed once listening).
 */
export function parseSocksAddress(text: string): { host: string; port: number } {
  const bad = new MeshError(
    'MESH_BAD_ARGUMENT',
    `Invalid --socks ${JSON.stringify(text)}: use HOST:PORT, [IPv6]:PORT or PORT, ` +
      `e.g. ${DEFAULT_SOCKS_ADDRESS}.`,
  )
  const value = text.trim()
  const colon = value.lastIndexOf(':')
  let host = value.slice(0, Math.max(colon, 0))
  const portText = value.slice(colon + 1)
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65_535) throw bad
  if (colon === -1) return { host: '127.0.0.1', port: Number(portText) }
  // An IPv6 address goes in brackets, as in a URL: `[::1]:1080`.
  const bracketed = /^\[([^\]]+)\]$/.exec(host)
  if (bracketed !== null) host = bracketed[1] ?? ''
  if (bracketed !== null ? isIP(host) !== 6 : host === '' || /[:[\]\s]/.test(host)) throw bad
  if (addressProblem(host) !== undefined) throw bad
  return { host, port: Number(portText) }
}

/**
 * The workspace a SOCKS host name means: `dev.coder-mesh` is `dev`,
 * `dev.alice.coder-mesh` is `alice/dev`; undefined for any other host.
 */
export function workspaceFromMeshHost(host: string): string | undefined {
  const labels = host.toLowerCase().replace(/\.$/, '').split('.')
  if (labels.pop() !== MESH_DOMAIN) return undefined
  if (labels.some((label) => nameProblem(label) !== undefined)) return undefined
  if (labels.length === 1) return labels[0]
  if (labels.length === 2) return `${labels[1]}/${labels[0]}`
  return undefined
}

/** Runs until `signal` aborts. */
export async function runConnect(api: ApiClient, options: ConnectOptions): Promise<void> {
  const pool = new MeshPool(api, options.paths ?? 'any')
  const owner = { url: api.url, session: sessionDigest(api.token) }
  const link = await startLink(options.configDir, owner, pool)
  let socks: Server | undefined
  try {
    socks = await startSocks(options.socks, pool)
    const address = socks.address()
    const port = typeof address === 'object' && address !== null ? address.port : 0
    if (!isLoopback(options.socks.host)) {
      notice(
        `Warning: the SOCKS5 proxy listens on ${options.socks.host}: anyone who can reach ` +
          `it reaches your workspaces in your name.`,
      )
    }
    await write(
      `SOCKS5 proxy on ${formatHostPort(options.socks.host, port)}: ` +
        `reach a workspace as NAME.${MESH_DOMAIN}:PORT (port ${SSH_PORT} is its SSH server).\n` +
        (link === undefined
          ? ''
          : `coder-mesh ssh, and ssh through config-ssh, now use this connection. `) +
        `Ctrl-C to stop.\n`,
    )
    if (!options.signal.aborted) {
      await new Promise((resolve) =>
        options.signal.addEventListener('abort', resolve, { once: true }),
      )
    }
    notice('Stopping: closing the connections to workspaces.')
  } finally {
    socks?.close()
    await link?.close()
    await pool.closeAll()
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host)
}

/** The workspace meshes of this run, one per workspace, opened on first use. */
class MeshPool {
  private readonly api: ApiClient
  private readonly paths: MeshPaths
  private readonly meshes = new Map<string, Promise<WorkspaceMesh>>()
  /** Per workspace and protocol, the streams open and waiting. */
  private readonly slots = new Map<string, Slots>()
  /** Our own username, asked for the first time a name carries an owner. */
  private username: Promise<string | undefined> | undefined
  private closed = false

  constructor(api: ApiClient, paths: MeshPaths) {
    this.api = api
    this.paths = paths
  }

  /**
   * Opens a stream to `workspace`. A mesh that could not be opened is
   * forgotten, so the next request tries afresh; one that is open stays,
   * whatever one stream met: it dials again and renews its ticket by itself
   * (mesh-client.ts), and the streams it already carries go on.
   */
  async open(workspace: string, protocol: string, header?: Uint8Array): Promise<MeshStream> {
    if (this.closed) throw new MeshError('MESH_CONNECT_FAILED', 'coder-mesh connect is stopping.')
    workspace = await this.ownName(workspace)
    let opening = this.meshes.get(workspace)
    if (opening === undefined) {
      opening = openWorkspaceMesh(this.api, workspace, {
        paths: this.paths,
        notice: (line) => notice(`${workspace}: ${line}`),
      }).then((mesh) => {
        notice(`Connected to ${workspace} ${viaPath(mesh.path())}.`)
        return mesh
      })
      this.meshes.set(workspace, opening)
    }
    let mesh: WorkspaceMesh
    try {
      mesh = await opening
    } catch (err) {
      if (this.meshes.get(workspace) === opening) this.meshes.delete(workspace)
      throw err
    }
    return mesh.openStream(protocol, { header })
  }

  /**
   * `OWNER/NAME` of one of our own workspaces is `NAME`, so that both ways
   * of naming it share one connection.
   */
  private async ownName(workspace: string): Promise<string> {
    const slash = workspace.indexOf('/')
    if (slash === -1) return workspace
    this.username ??= this.api.me().then(
      (user) => user.username,
      () => {
        // Asked again next time: the coordinator may be back.
        this.username = undefined
        return undefined
      },
    )
    const owner = workspace.slice(0, slash)
    return owner === (await this.username) ? workspace.slice(slash + 1) : workspace
  }

  /**
   * Runs `use` once a stream of `protocol` to `workspace` may be opened: the
   * agent takes at most MAX_STREAMS_PER_PROTOCOL of a protocol on one
   * connection, so the ones beyond wait for a stream to end.
   */
  async withStreamSlot<T>(workspace: string, protocol: string, use: () => Promise<T>): Promise<T> {
    const key = `${await this.ownName(workspace)} ${protocol}`
    let slots = this.slots.get(key)
    if (slots === undefined) {
      slots = new Slots(MAX_STREAMS_PER_PROTOCOL)
      this.slots.set(key, slots)
    }
    try {
      return await slots.run(use)
    } finally {
      if (slots.idle && this.slots.get(key) === slots) this.slots.delete(key)
    }
  }

  async closeAll(): Promise<void> {
    this.closed = true
    const all = [...this.meshes.values()]
    this.meshes.clear()
    await Promise.all(
      all.map((opening) =>
        opening.then(
          (mesh) => mesh.close(),
          () => undefined,
        ),
      ),
    )
  }
}

// ---------------------------------------------------------------------------
// SOCKS5

async function startSocks(
  address: { host: string; port: number },
  pool: MeshPool,
): Promise<Server> {
  const socks = new Socks5Server()
  const handshakes = new WeakMap<Socket, NodeJS.Timeout>()
  socks.setConnectionHandler((connection, sendStatus) => {
    // Our own server made the socket: a net.Socket that allows half-open.
    const socket = connection.socket as Socket
    // The library dropped its error listener before calling us: a client
    // that resets the connection now must not take the process down.
    socket.on('error', () => undefined)
    clearTimeout(handshakes.get(socket))
    void carry(pool, socket, connection.destAddress, connection.destPort, sendStatus)
  })
  // Half-open: a client's FIN ends only its direction (bridge.ts).
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    // A client that never finishes its SOCKS request, or sends it a byte at
    // a time, does not hold a socket for longer than this in all.
    const deadline = setTimeout(() => socket.destroy(), SOCKS_HANDSHAKE_MS)
    deadline.unref()
    handshakes.set(socket, deadline)
    socket.once('close', () => clearTimeout(deadline))
    socks._handleConnection(socket)
  })
  return listen(server, address, '--socks')
}

/** Carries one SOCKS connection to `host:port`, replying first. */
async function carry(
  pool: MeshPool,
  socket: Socket,
  host: string,
  port: number,
  reply: (status: SocksStatus) => void,
): Promise<void> {
  const workspace = workspaceFromMeshHost(host)
  // The host name is the client's to choose: no terminal commands in our log.
  const target = printable(`${host}:${port}`)
  if (workspace === undefined || !isPort(port)) {
    notice(`Refused a SOCKS connection to ${target}: only NAME.${MESH_DOMAIN} hosts are served.`)
    reply('CONNECTION_NOT_ALLOWED')
    return
  }

  const ssh = port === SSH_PORT
  const protocol = ssh ? SSH_PROTOCOL : TCP_PROTOCOL
  await pool.withStreamSlot(workspace, protocol, async () => {
    let duplex: Duplex
    try {
      const header = ssh ? undefined : encodeForwardRequest(port)
      duplex = (await pool.open(workspace, protocol, header)).duplex
      if (!ssh && !(await readForwardStatus(duplex))) {
        notice(`Connection to ${workspace}:${port} refused in the workspace.`)
        duplex.end()
        duplex.resume()
        reply('CONNECTION_REFUSED')
        return
      }
    } catch (err) {
      notice(`Could not reach ${target}: ${describe(err)}`)
      reply(socksStatusFor(err))
      return
    }

    if (socket.destroyed) {
      duplex.destroy()
      return
    }
    reply('REQUEST_GRANTED')
    await bridge(socket, duplex)
  })
}

function socksStatusFor(err: unknown): SocksStatus {
  if (!isMeshError(err)) return 'GENERAL_FAILURE'
  // A workspace that does not exist is a host that cannot be reached, as
  // an unknown host name would be; one we may not use is refused.
  const refused: ErrorCode[] = ['MESH_FORBIDDEN', 'MESH_INVALID_NAME']
  return refused.includes(err.code) ? 'CONNECTION_NOT_ALLOWED' : 'HOST_UNREACHABLE'
}

// ---------------------------------------------------------------------------
// The link

/** Whose streams the link hands out: connect's coordinator and login. */
interface LinkOwner {
  url: string
  session: string
}

/**
 * Listens on the link; undefined when the config folder's path is too long
 * for one (connect then serves SOCKS only). A link some other `connect`
 * answers on is an error (MESH_ALREADY_RUNNING); one nobody answers on is
 * left over from a `connect` that was killed, and replaced. Anything else
 * at that path is not ours to remove.
 */
async function startLink(dir: string, owner: LinkOwner, pool: MeshPool): Promise<Link | undefined> {
  const path = linkPath(dir)
  const length = Buffer.byteLength(path)
  if (length > MAX_SOCKET_PATH) {
    notice(
      `Warning: no link for ssh: the path ${printable(path)} is ${length} bytes, longer than ` +
        `the ${MAX_SOCKET_PATH} a Unix socket may have. ssh will connect by itself; ` +
        `a shorter config folder (CODER_MESH_CONFIG_DIR) lets it use this connection.`,
    )
    return undefined
  }

  // A login from the environment (CODER_MESH_SESSION_TOKEN) may never have
  // made the folder.
  await ensureConfigDir(dir)
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    void serveLink(socket, owner, pool)
  })
  try {
    return await listenUnix(server, path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw linkFailed(path, err)
  }
  const existing = await lstat(path).catch(() => undefined)
  if (existing !== undefined && !existing.isSocket()) {
    throw new MeshError(
      'MESH_CONFIG_UNWRITABLE',
      `Cannot make the link ${path}: something that is not a socket is in its place; ` +
        `move it away and start again.`,
    )
  }
  if (await linkAnswers(dir)) {
    throw new MeshError(
      'MESH_ALREADY_RUNNING',
      `coder-mesh connect is already running for ${dir} (its link ${path} answers): ` +
        `stop that one first.`,
    )
  }
  await unlink(path).catch(() => undefined)
  return listenUnix(server, path).catch((err: unknown) => {
    throw linkFailed(path, err)
  })
}

interface Link {
  /** Stops listening and removes the socket, if it is still this link's. */
  close(): Promise<void>
}

async function listenUnix(server: Server, path: string): Promise<Link> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(path, () => {
      server.off('error', reject)
      resolve()
    })
  })
  // The socket hands out streams in the user's name, like the session file.
  await chmod(path, 0o600)
  server.on('error', (err) => notice(`Link ${path}: ${err.message}`))
  const made = await lstat(path)
  return {
    async close() {
      const now = await lstat(path).catch(() => undefined)
      if (now?.ino === made.ino && now.dev === made.dev) {
        // Closing a Unix socket server removes its path (libuv does).
        server.close()
        return
      }
      // Someone removed our socket and another connect made its own in
      // its place: closing ours would remove theirs, by name. The socket
      // goes with the process instead.
      server.unref()
    },
  }
}

function linkFailed(path: string, cause: unknown): MeshError {
  const message = `Cannot make the link ${path}: ${describe(cause)}.`
  return new MeshError('MESH_CONFIG_UNWRITABLE', message, { cause })
}

async function serveLink(socket: Socket, owner: LinkOwner, pool: MeshPool): Promise<void> {
  socket.on('error', () => undefined)
  const send = (reply: LinkReply): void => {
    socket.write(JSON.stringify(reply) + '\n')
  }

  // A client that connects and says nothing does not hold a socket forever.
  socket.setTimeout(LINK_REQUEST_MS, () => socket.destroy())
  const request = parseRequest(await readLine(socket).catch(() => ''))
  socket.setTimeout(0)
  if (request === undefined) {
    socket.destroy()
    return
  }
  if (request.url !== owner.url || request.session !== owner.session) {
    send({
      ok: false,
      code: 'MESH_LINK_OTHER_SESSION',
      message: `connect serves another login or coordinator (${owner.url}).`,
    })
    socket.end()
    return
  }

  socket.write(LINK_ACCEPTED + '\n')
  await pool.withStreamSlot(request.workspace, SSH_PROTOCOL, async () => {
    let stream: MeshStream
    try {
      stream = await pool.open(request.workspace, SSH_PROTOCOL)
    } catch (err) {
      const error = isMeshError(err)
        ? err
        : new MeshError('MESH_CONNECT_FAILED', 'Could not reach the workspace agent.', {
            detail: describe(err),
          })
      send({ ok: false, code: error.code, message: error.message, detail: error.detail })
      socket.end()
      return
    }
    if (socket.destroyed) {
      stream.duplex.destroy()
      return
    }
    send({ ok: true, path: stream.path })
    await bridge(socket, stream.duplex)
  })
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
