/**
 * `coder-mesh port-forward NAME --tcp LOCAL:REMOTE...`: listens on local
 * ports and carries each accepted connection to REMOTE on the workspace's
 * loopback, one mesh stream per connection (wire format in
 * netstack/forward.ts), all streams on one connection to the agent
 * (mesh-client.ts).
 *
 * - Backpressure and half-close end to end (netstack/bridge.ts).
 * - A port the workspace refuses closes the local connection at once, with
 *   a reset, and costs the other connections nothing (field case B10).
 * - At most MAX_STREAMS_PER_PROTOCOL connections are carried at a time;
 *   more wait in a queue for a free stream instead of being reset.
 * - A lost connection to the agent is dialed again by the next local
 *   connection; the ones it carried are reset.
 */
import { createServer, isIP, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { bridge } from '../netstack/bridge.ts'
import { MAX_STREAMS_PER_PROTOCOL, TCP_PROTOCOL } from '../netstack/constants.ts'
import { encodeForwardRequest, isPort, MAX_PORT, readForwardStatus } from '../netstack/forward.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import { MeshError } from '../sdk/errors.ts'
import { openWorkspaceMesh, type MeshPaths, type WorkspaceMesh } from './mesh-client.ts'
import { notice, write } from './output.ts'
import { Slots } from './slots.ts'

export const DEFAULT_FORWARD_HOST = '127.0.0.1'

/** One `--tcp` flag: listen on host:port here, forward to `remote` there. */
export interface ForwardSpec {
  host: string
  /** Local port; 0 picks a free one (printed once listening). */
  port: number
  remote: number
}

const SPEC_HELP = 'use LOCAL:REMOTE or ADDR:LOCAL:REMOTE, e.g. 8080:80 or 0.0.0.0:8080:80'

/**
 * Parses a `--tcp` value: `PORT` (same port both ends), `LOCAL:REMOTE`, or
 * `ADDR:LOCAL:REMOTE` where ADDR is an IPv4 address, `[IPv6]` or a host
 * name. LOCAL may be 0 (any free port); REMOTE is 1-65535.
 */
export function parseForwardSpec(value: string): ForwardSpec {
  const bad = (reason: string): MeshError =>
    new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid --tcp ${JSON.stringify(value)}: ${reason}; ${SPEC_HELP}.`,
    )

  let host = DEFAULT_FORWARD_HOST
  let rest = value.trim()
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']')
    if (close === -1) throw bad('unclosed [')
    host = rest.slice(1, close)
    if (isIP(host) !== 6) throw bad(`${JSON.stringify(host)} is not an IPv6 address`)
    if (rest[close + 1] !== ':') throw bad('a port must follow the address')
    rest = rest.slice(close + 2)
    if (rest.split(':').length !== 2) throw bad('give both LOCAL and REMOTE after the address')
  }

  const parts = rest.split(':')
  if (parts.length > 3) throw bad('too many colons (put an IPv6 address in brackets)')
  if (parts.length === 3) {
    host = parts.shift() ?? ''
    if (host === '') throw bad('the address is empty')
    const problem = addressProblem(host)
    if (problem !== undefined) throw bad(problem)
  }
  const [localText = '', remoteText = localText] = parts
  const local = parsePort(localText, bad, 'LOCAL')
  const remote = parsePort(remoteText, bad, 'REMOTE')
  if (!isPort(remote)) throw bad(`REMOTE must be 1-${MAX_PORT}`)
  return { host, port: local, remote }
}

/**
 * Why `host`, given as a listening address, is not one. A bare number is
 * refused: the resolver would take `8080` for the IPv4 address 0.0.31.144,
 * which is never what was meant.
 */
export function addressProblem(host: string): string | undefined {
  if (/^\d+$/.test(host)) return `the address ${JSON.stringify(host)} is a bare number`
  return undefined
}

function parsePort(text: string, bad: (reason: string) => MeshError, which: string): number {
  if (!/^\d{1,5}$/.test(text)) throw bad(`${which} ${JSON.stringify(text)} is not a port number`)
  const port = Number(text)
  if (port > MAX_PORT) throw bad(`${which} must be at most ${MAX_PORT}`)
  return port
}

/**
 * Parses every `--tcp` value; MESH_BAD_ARGUMENT for none, a bad one, or a
 * local port given twice.
 */
export function parseForwardSpecs(values: readonly string[]): ForwardSpec[] {
  if (values.length === 0) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Nothing to forward: add --tcp LOCAL:REMOTE.`)
  }
  const specs = values.map(parseForwardSpec)
  const seen = new Set<string>()
  for (const spec of specs) {
    const key = `${spec.host}:${spec.port}`
    if (spec.port !== 0 && seen.has(key)) {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `Local address ${formatHostPort(spec.host, spec.port)} is given twice.`,
      )
    }
    seen.add(key)
  }
  return specs
}

/**
 * The error for `port-forward NAME` without --tcp, naming the ports the
 * workspace listens on (as its agent last reported) and a --tcp for one;
 * the plain error when they cannot be had.
 */
export async function nothingToForward(api: ApiClient, workspace: string): Promise<MeshError> {
  let offer = ''
  try {
    const ports = (await api.workspace(workspace)).agent?.ports ?? []
    const unique = [...new Map(ports.map((p) => [p.port, p])).values()]
    if (unique.length > 0) {
      const shown = unique
        .slice(0, 20)
        .map((p) => (p.process === undefined ? String(p.port) : `${p.port} (${p.process})`))
      const more = unique.length > shown.length ? ` and ${unique.length - shown.length} more` : ''
      const first = unique[0]!.port
      offer =
        ` Workspace ${workspace} listens on ${shown.join(', ')}${more};` +
        ` e.g. --tcp ${first}:${first}.`
    }
  } catch {
    // No listing: the plain message still says what to do.
  }
  return new MeshError('MESH_BAD_ARGUMENT', `Nothing to forward: add --tcp LOCAL:REMOTE.${offer}`)
}

/** `127.0.0.1:8080`, `[::1]:8080`. */
export function formatHostPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`
}

export interface PortForwardOptions {
  workspace: string
  specs: ForwardSpec[]
  /** Which paths to the agent to use; default `any`. */
  paths?: MeshPaths
  /** Ends the forward: listeners close, connections are reset, the node stops. */
  signal: AbortSignal
}

/**
 * Forwards until `signal` aborts. Prints `Forwarding ADDR:LOCAL -> NAME:REMOTE`
 * on stdout per spec once listening; reports refused or failed connections
 * on stderr.
 */
export async function runPortForward(api: ApiClient, options: PortForwardOptions): Promise<void> {
  const { workspace, signal } = options
  let mesh: WorkspaceMesh
  try {
    mesh = await openWorkspaceMesh(api, workspace, { signal, paths: options.paths })
  } catch (err) {
    if (signal.aborted) return
    throw err
  }

  const forwarder = new Forwarder(mesh, workspace)
  const servers: Server[] = []
  try {
    for (const spec of options.specs) {
      const server = await listenForward(spec, (socket) => forwarder.carry(socket, spec))
      servers.push(server)
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : spec.port
      await write(`Forwarding ${formatHostPort(spec.host, port)} -> ${workspace}:${spec.remote}\n`)
    }
    if (!signal.aborted) {
      await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))
    }
  } finally {
    for (const server of servers) server.close()
    forwarder.closeAll()
    await mesh.close()
  }
}

function listenForward(spec: ForwardSpec, onSocket: (socket: Socket) => void): Promise<Server> {
  // Half-open: a client's FIN ends only its direction (bridge.ts).
  const server = createServer({ allowHalfOpen: true, noDelay: true }, onSocket)
  return listen(server, spec, '--tcp')
}

/**
 * Starts `server` listening on `address`; a taken or impossible address is
 * MESH_BAD_ARGUMENT naming it and `flag`, the option to change.
 */
export function listen(
  server: Server,
  address: { host: string; port: number },
  flag: string,
): Promise<Server> {
  const where = formatHostPort(address.host, address.port)
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const reason = err.code === 'EADDRINUSE' ? 'the address is in use' : err.message
      reject(
        new MeshError('MESH_BAD_ARGUMENT', `Cannot listen on ${where}: ${reason}.`, {
          detail: `choose another address with ${flag}; ${err.message}`,
          cause: err,
        }),
      )
    })
    server.listen(address.port, address.host, () => {
      server.removeAllListeners('error')
      server.on('error', (err) => notice(`Listener ${where}: ${err.message}`))
      resolve(server)
    })
  })
}

/** Carries local connections over the mesh, at most MAX_STREAMS_PER_PROTOCOL at a time. */
class Forwarder {
  private readonly mesh: WorkspaceMesh
  private readonly workspace: string
  private readonly sockets = new Set<Socket>()
  private readonly slots = new Slots(MAX_STREAMS_PER_PROTOCOL)

  constructor(mesh: WorkspaceMesh, workspace: string) {
    this.mesh = mesh
    this.workspace = workspace
  }

  carry(socket: Socket, spec: ForwardSpec): void {
    this.sockets.add(socket)
    // Until the bridge takes over, errors only end this connection.
    socket.on('error', () => undefined)
    socket.once('close', () => this.sockets.delete(socket))
    void this.slots.run(() => this.forward(socket, spec))
  }

  closeAll(): void {
    for (const socket of this.sockets) socket.resetAndDestroy()
  }

  private async forward(socket: Socket, spec: ForwardSpec): Promise<void> {
    if (socket.destroyed) return
    const target = `${this.workspace}:${spec.remote}`
    let duplex: Duplex
    try {
      const stream = await this.mesh.openStream(TCP_PROTOCOL, {
        header: encodeForwardRequest(spec.remote),
      })
      duplex = stream.duplex
      // Failures surface through the status read and the bridge below.
      duplex.on('error', () => undefined)
    } catch (err) {
      notice(`Could not forward a connection to ${target}: ${(err as Error).message}`)
      socket.resetAndDestroy()
      return
    }

    let connected: boolean
    try {
      connected = await readForwardStatus(duplex)
    } catch (err) {
      notice(`Could not forward a connection to ${target}: ${(err as Error).message}`)
      duplex.destroy()
      socket.resetAndDestroy()
      return
    }
    if (!connected) {
      notice(`Connection to ${target} refused in the workspace.`)
      duplex.end()
      duplex.resume()
      socket.resetAndDestroy()
      return
    }
    if (socket.destroyed) {
      duplex.destroy()
      return
    }
    await bridge(socket, duplex)
  }
}
