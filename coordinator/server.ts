/**
 * Serving the coordinator over HTTP: `startServer` for code and tests,
 * `runServerCommand` for `coder-mesh server`.
 */
import { createAdaptorServer } from '@hono/node-server'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { defaultDataDir } from '../sdk/config.ts'
import { MeshError } from '../sdk/errors.ts'
import { createLogger, type Logger } from '../sdk/logger.ts'
import { createApp } from './api.ts'
import type { ProvisionFn } from './builds.ts'
import { DEFAULT_ADDRESS } from './constants.ts'
import { openCoordinator, type Coordinator } from './coordinator.ts'
import type { AppEnv } from './http.ts'

export interface ServerInit {
  /** host:port to listen on; port 0 picks a free one. */
  address: string
  dataDir: string
  /** The URL users and agents reach the server at; default http://<address>. */
  accessUrl?: string
  /** libp2p listen addresses of the relay; default ['/ip4/0.0.0.0/tcp/0']. */
  p2pListen?: string[]
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
    throw new MeshError('MESH_BAD_ARGUMENT', `Invalid address ${JSON.stringify(address)}.`, {
      detail: 'use HOST:PORT, e.g. 127.0.0.1:7080 or [::1]:7080',
    })
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port }
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
  const { host, port } = parseAddress(init.address)
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
  const url = (init.accessUrl ?? urlFor(host, (server.address() as AddressInfo).port)).replace(
    /\/+$/,
    '',
  )

  let coordinator: Coordinator
  try {
    coordinator = await openCoordinator({
      dataDir: init.dataDir,
      accessUrl: url,
      p2pListen: init.p2pListen,
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
}): Promise<void> {
  const log = createLogger('mesh:coordinator')
  const server = await startServer({
    address: opts.address ?? DEFAULT_ADDRESS,
    dataDir: opts.dataDir ?? defaultDataDir(),
    accessUrl: opts.accessUrl,
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
