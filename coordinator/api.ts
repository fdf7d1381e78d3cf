/**
 * The HTTP API: middleware (request id, one log line per request, body
 * limits), the routes, and the error envelope. Served by server.ts; tests
 * call `createApp(coordinator).request()` without a port.
 */
import { Hono, type MiddlewareHandler } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { requestId } from 'hono/request-id'
import pkg from '../package.json' with { type: 'json' }
import type { BuildInfo } from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { MAX_BODY_BYTES, MAX_TEMPLATE_BODY_BYTES } from './constants.ts'
import type { Coordinator } from './coordinator.ts'
import { notFound, onError } from './errors.ts'
import { requireSession, type AppEnv } from './http.ts'
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

/** One line per request: method, path (never the query), status, duration, request id. */
function requestLog(log: Logger): MiddlewareHandler<AppEnv> {
  return async function requestLog(c, next) {
    const started = performance.now()
    await next()
    log.info(
      {
        method: c.req.method,
        path: c.req.path,
        status: c.res.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        request_id: c.get('requestId'),
      },
      'request',
    )
  }
}

export function createApp(coordinator: Coordinator): Hono<AppEnv> {
  const log = coordinator.log.child({ component: 'http' })
  const app = new Hono<AppEnv>()
  const auth = requireSession(coordinator.users)

  app.use(requestId())
  app.use(requestLog(log))
  app.use(bodyLimits())
  app.onError(onError(log))
  app.notFound(notFound)

  app.get('/healthz', (c) => c.text('ok'))
  app.get('/api/v1/buildinfo', (c) => {
    const body: BuildInfo = { version: pkg.version }
    return c.json(body)
  })

  userRoutes(app, coordinator, auth)
  templateRoutes(app, coordinator, auth)
  workspaceRoutes(app, coordinator, auth)
  return app
}
