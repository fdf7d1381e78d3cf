/**
 * Serving the coordinator over HTTP: `startServer` for code and tests,
 * `runServerCommand` for `coder-mesh server`.
 */
import { createAdaptorServer } from '@hono/node-server'
import type { Server } from 'node:http'
import { createServer, type AddressInfo } from 'node:net'
import { defaultDataDir } from '../sdk/config.ts'
import { MeshError } from '../sdk/errors.ts'
import { createLogger, type Logger } from '../sdk/logger.ts'
import { createApp } from './api.ts'
import type { ProvisionFn } from './builds.ts'
import { DEFAULT_ADDRESS } from './constants.ts'
import { openCoordinator, type Coordinator } from './coordinator.ts'
import type { AppEnv } from './http.ts'
import { ipv4HostPort, stunHostPort } from './relay.ts'

export interface ServerInit {
  /** host:port to listen on; port 0 picks a free one. */
  address: string
  dataDir: string
  /** The URL users and agents reach the server at; default http://<address>. */
  accessUrl?: string
  /** libp2p listen addresses of the relay; default from relayAddress and relayWsAddress. */
  p2pListen?: string[]
  /** TCP `IPV4:PORT` of the relay; default 0.0.0.0, a free port. */
  relayAddress?: string
  /** TCP `IPV4:PORT` of the relay's WebSockets listener, or false for none; default a free port. */
  relayWsAddress?: string | false
  /** UDP `IPV4:PORT` of the STUN responder, or false for none; default 0.0.0.0, a free port. */
  stunAddress?: string | false
  log?: Logger
  /** Runs one build; default: the in-process provisioner. */
  provision?: ProvisionFn
  /** How long close() waits for running builds before canceling them, in ms; default 30 s. */
  buildGrace?: number
  /** How often agents register again, in seconds; default 15. Tests shorten it. */
  heartbeatSeconds?: number
}

export interface RunningServer {
  /** The access URL. */
  url: string
  dataDir: string
  /** The relay's multiaddrs, each ending in /p2p/<peer id>. */
  relayAddrs: string[]
  close(): Promise<void>
}

/** Splits `host:port` (or `[v6]:port`). */
export function parseAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(address)
  const port = Number(match?.[3])
  if (match === null || port > 65535) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid address ${JSON.stringify(address)}: ` +
        'use HOST:PORT, e.g. 127.0.0.1:7080 or [::1]:7080.',
    )
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port }
}

const ACCESS_URL_EXAMPLE = 'http://dev.example.com:7080'

/**
 * The access URL (`--access-url`) as agents and users are given it, without
 * a trailing slash; MESH_BAD_ARGUMENT unless it is http(s) with a host and
 * a port in range, with no user name, password, query or fragment. A path
 * is kept: a reverse proxy may serve the coordinator under one.
 */
export function parseAccessUrl(raw: string): string {
  // Never echo a URL that may hold a password: errors reach logs and terminals.
  const shown = raw.includes('@') ? '' : ` ${JSON.stringify(raw)}`
  const bad = (why: string): MeshError =>
    new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid --access-url${shown}: ${why}, e.g. --access-url ${ACCESS_URL_EXAMPLE}.`,
    )
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw bad('use an http or https URL with a host and, if not 80 or 443, a port (1-65535)')
  }
  if (url.username !== '' || url.password !== '') {
    throw bad('a user name or password does not belong in it; use a URL without one')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw bad(`use http or https, not ${url.protocol.slice(0, -1)}`)
  }
  if (url.hostname === '') throw bad('it names no host')
  if (url.port === '0') throw bad('port 0 cannot be reached; use the port it listens on')
  if (raw.includes('?') || raw.includes('#')) throw bad('use a URL without a query or fragment')
  return url.href.replace(/\/+$/, '')
}

/**
 * `--stun-address`: `IPV4:PORT` (host empty for 0.0.0.0; port 0 picks one)
 * or false for no STUN responder; MESH_BAD_ARGUMENT otherwise.
 */
export function parseStunAddress(raw: string | false): string | false {
  if (raw !== false) stunHostPort(raw)
  return raw
}

/** A TCP listener the server opens, and the flag that set it. */
interface Listener {
  flag: string
  host: string
  port: number
}

/**
 * The relay's listeners from `--relay-address` and `--relay-ws-address`
 * (each `IPV4:PORT`, port 0 for a free one; the second also false for
 * none); MESH_BAD_ARGUMENT for a malformed one.
 */
function relayListeners(tcp = ':0', ws: string | false = ':0'): Listener[] {
  const flag = '--relay-address'
  const listeners = [{ flag, ...ipv4HostPort(flag, tcp, '0.0.0.0:7081') }]
  if (ws !== false) {
    const wsFlag = '--relay-ws-address'
    listeners.push({ flag: wsFlag, ...ipv4HostPort(wsFlag, ws, '0.0.0.0:7082, or off') })
  }
  return listeners
}

function relayMultiaddr({ flag, host, port }: Listener): string {
  return `/ip4/${host}/tcp/${port}${flag === '--relay-ws-address' ? '/ws' : ''}`
}

/** The relay's libp2p listen addresses (see relayListeners). */
export function relayListen(tcp?: string, ws?: string | false): string[] {
  return relayListeners(tcp, ws).map(relayMultiaddr)
}

/**
 * MESH_BAD_ARGUMENT, naming both flags, when two listeners ask for the same
 * port (0, a free one, never clashes); the kernel would refuse the second
 * only after the store was opened.
 */
function assertDistinctPorts(listeners: Listener[]): void {
  for (const [i, a] of listeners.entries()) {
    const b = listeners.slice(i + 1).find((other) => other.port === a.port && a.port !== 0)
    if (b !== undefined) {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `${a.flag} and ${b.flag} both ask for port ${a.port}: give each its own port.`,
      )
    }
  }
}

/**
 * MESH_BAD_ARGUMENT, naming the flag, when another process holds a fixed
 * port: found before anything is opened, instead of by libp2p once the
 * store and the HTTP listener are up.
 */
async function assertCanListen({ flag, host, port }: Listener): Promise<void> {
  if (port === 0) return
  const probe = createServer()
  try {
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject)
      probe.listen(port, host, resolve)
    })
  } catch (err) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Cannot listen on ${flag} ${host}:${port}: ${(err as Error).message}; pick a free port.`,
      { cause: err },
    )
  } finally {
    await new Promise((resolve) => probe.close(resolve))
  }
}

function urlFor(host: string, port: number): string {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`
}

function unavailable(): Response {
  const error = new MeshError('MESH_UNAVAILABLE', 'The coordinator is starting or shutting down.')
  return Response.json(error.toJSON(), { status: 503, headers: { 'retry-after': '5' } })
}

type FetchFn = (req: Request, env: AppEnv['Bindings']) => Response | Promise<Response>

export async function startServer(init: ServerInit): Promise<RunningServer> {
  // Every setting is checked before anything listens or logs. Known
  // shortcoming: a STUN port already in use shows only when openCoordinator
  // binds it, after the store opened and the relay started.
  const { host, port } = parseAddress(init.address)
  const accessUrl = init.accessUrl === undefined ? undefined : parseAccessUrl(init.accessUrl)
  const stunAddress =
    init.stunAddress === undefined ? undefined : parseStunAddress(init.stunAddress)
  const relay = relayListeners(init.relayAddress, init.relayWsAddress)
  assertDistinctPorts([{ flag: '--address', host, port }, ...relay])
  const p2pListen = init.p2pListen ?? relay.map(relayMultiaddr)
  if (init.p2pListen === undefined) for (const listener of relay) await assertCanListen(listener)
  const log = init.log ?? createLogger('mesh:coordinator')

  // Listen first: the access URL (a build variable) may need the real port.
  // Once closing, new requests get 503 at once: no new work starts.
  let fetch: FetchFn | undefined
  const server = createAdaptorServer({
    fetch: (req: Request, env: unknown) =>
      fetch === undefined ? unavailable() : fetch(req, env as AppEnv['Bindings']),
    hostname: host,
  }) as Server
  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error): void => {
      server.off('listening', ok)
      reject(
        new MeshError('MESH_BAD_ARGUMENT', `Cannot listen on ${init.address}: ${err.message}.`, {
          cause: err,
        }),
      )
    }
    const ok = (): void => {
      server.off('error', fail)
      resolve()
    }
    server.once('error', fail)
    server.once('listening', ok)
    server.listen(port, host)
  })
  server.on('error', (err) => log.error({ err }, 'http server'))
  const url = accessUrl ?? urlFor(host, (server.address() as AddressInfo).port)

  let coordinator: Coordinator
  try {
    coordinator = await openCoordinator({
      dataDir: init.dataDir,
      accessUrl: url,
      p2pListen,
      stunAddress,
      log,
      provision: init.provision,
      buildGrace: init.buildGrace,
      heartbeatSeconds: init.heartbeatSeconds,
    })
  } catch (err) {
    server.close()
    throw err
  }
  const app = createApp(coordinator)
  fetch = (req, env) => app.fetch(req, env)
  log.info({ url, data_dir: coordinator.dataDir }, 'coordinator listening')

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    fetch = undefined
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeIdleConnections()
    await coordinator.close()
    server.closeAllConnections()
    await closed
  }

  return {
    url,
    dataDir: coordinator.dataDir,
    relayAddrs: coordinator.relayAddrs(),
    close: () => (closing ??= close()),
  }
}

/** `coder-mesh server`: runs until SIGINT or SIGTERM, then shuts down and exits 0. */
export async function runServerCommand(opts: {
  address?: string
  dataDir?: string
  accessUrl?: string
  stunAddress?: string | false
  relayAddress?: string
  relayWsAddress?: string | false
}): Promise<void> {
  const log = createLogger('mesh:coordinator')
  const server = await startServer({
    address: opts.address ?? DEFAULT_ADDRESS,
    dataDir: opts.dataDir ?? defaultDataDir(),
    accessUrl: opts.accessUrl,
    stunAddress: opts.stunAddress,
    relayAddress: opts.relayAddress,
    relayWsAddress: opts.relayWsAddress,
    log,
  })
  process.stdout.write(`coder-mesh server listening on ${server.url}\n`)
  process.stdout.write(`data: ${server.dataDir}\n`)

  const shutdown = (signal: string): void => {
    log.info({ signal }, 'shutting down')
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed')
        process.exit(1)
      },
    )
  }
  process.once('SIGINT', shutdown)
  process.once('SIGTERM', shutdown)
}
