/**
 * The HTTP API: middleware (request id, one log line and one metric per
 * request, body limits), the route table, and the error envelope. Served by
 * server.ts; tests call `createApp(coordinator).request()` without a port.
 */
import { Hono, type MiddlewareHandler } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { requestId } from 'hono/request-id'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { MAX_BODY_BYTES, MAX_TEMPLATE_BODY_BYTES } from './constants.ts'
import type { Coordinator } from './coordinator.ts'
import { notFound, onError } from './errors.ts'
import type { AppEnv } from './http.ts'
import type { Metrics } from './metrics.ts'
import { registerRoutes, type AnyRoute } from './routes.ts'
import { systemRoutes } from './routes-system.ts'
import { userRoutes } from './routes-users.ts'
import { templateRoutes, workspaceRoutes } from './routes-workspaces.ts'

const TEMPLATE_PUSH = /^\/api\/v1\/templates\/[^/]+\/versions\/?$/

function tooLarge(limit: number): never {
  throw new MeshError('MESH_BODY_TOO_LARGE', `The request body is larger than ${limit} bytes.`)
}

/** 1 MiB for every body, 16 MiB for template pushes. */
function bodyLimits(): MiddlewareHandler<AppEnv> {
  const small = bodyLimit({ maxSize: MAX_BODY_BYTES, onError: () => tooLarge(MAX_BODY_BYTES) })
  const large = bodyLimit({
    maxSize: MAX_TEMPLATE_BODY_BYTES,
    onError: () => tooLarge(MAX_TEMPLATE_BODY_BYTES),
  })
  return function bodyLimits(c, next) {
    return TEMPLATE_PUSH.test(c.req.path) ? large(c, next) : small(c, next)
  }
}

/**
 * One log line and one metric per request: method, route pattern (the path
 * only in the log, never the query), status, duration, request id.
 */
function requestLog(log: Logger, metrics: Metrics): MiddlewareHandler<AppEnv> {
  return async function requestLog(c, next) {
    const started = performance.now()
    await next()
    const seconds = (performance.now() - started) / 1000
    const route = (c.get('route') as string | undefined) ?? 'unmatched'
    metrics.httpRequest(c.req.method, route, c.res.status, seconds)
    log.info(
      {
        method: c.req.method,
        path: c.req.path,
        status: c.res.status,
        ms: Math.round(seconds * 10_000) / 10,
        request_id: c.get('requestId'),
      },
      'request',
    )
  }
}

/** Every route the coordinator serves, in registration order. */
export function routeTable(coordinator: Coordinator): AnyRoute[] {
  const table: AnyRoute[] = []
  table.push(
    ...systemRoutes(coordinator, () => table),
    ...userRoutes(coordinator),
    ...templateRoutes(coordinator),
    ...workspaceRoutes(coordinator),
  )
  return table
}

export function createApp(coordinator: Coordinator): Hono<AppEnv> {
  const log = coordinator.log.child({ component: 'http' })
  const app = new Hono<AppEnv>()

  app.use(requestId())
  app.use(requestLog(log, coordinator.metrics))
  app.use(bodyLimits())
  app.onError(onError(log))
  app.notFound(notFound)

  registerRoutes(app, routeTable(coordinator), {
    users: coordinator.users,
    audit: coordinator.audit,
  })
  return app
}
