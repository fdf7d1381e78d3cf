/** Routes for templates, workspaces, builds and their logs, agents and tickets. */
import type { Hono, MiddlewareHandler } from 'hono'
import { stream } from 'hono/streaming'
import {
  AgentRegisterRequest,
  ConnectRequest,
  CreateBuildRequest,
  CreateWorkspaceRequest,
  PushTemplateRequest,
} from '../sdk/api-types.ts'
import { streamBuildLogs } from './build-logs.ts'
import type { Coordinator } from './coordinator.ts'
import { bearerToken, readJson, type AppEnv } from './http.ts'

export function templateRoutes(
  app: Hono<AppEnv>,
  coordinator: Coordinator,
  auth: MiddlewareHandler<AppEnv>,
): void {
  const { templates } = coordinator

  app.get('/api/v1/templates', auth, async (c) => c.json(await templates.list()))

  app.post('/api/v1/templates/:name/versions', auth, async (c) => {
    const request = await readJson(c, PushTemplateRequest)
    const version = await templates.push(c.req.param('name'), request, c.get('user'))
    return c.json(version, 201)
  })

  app.get('/api/v1/templates/:name/versions', auth, async (c) =>
    c.json(await templates.versions(c.req.param('name'))),
  )
}

export function workspaceRoutes(
  app: Hono<AppEnv>,
  coordinator: Coordinator,
  auth: MiddlewareHandler<AppEnv>,
): void {
  const { workspaces, agents, store, hub, log } = coordinator

  app.get('/api/v1/workspaces', auth, async (c) => c.json(await workspaces.list(c.get('user'))))

  app.post('/api/v1/workspaces', auth, async (c) => {
    const request = await readJson(c, CreateWorkspaceRequest)
    return c.json(await workspaces.create(c.get('user'), request), 201)
  })

  app.get('/api/v1/workspaces/:name', auth, async (c) =>
    c.json(await workspaces.get(c.get('user'), c.req.param('name'))),
  )

  app.post('/api/v1/workspaces/:name/builds', auth, async (c) => {
    const { transition } = await readJson(c, CreateBuildRequest)
    return c.json(await workspaces.createBuild(c.get('user'), c.req.param('name'), transition), 201)
  })

  app.post('/api/v1/workspaces/:name/connect', auth, async (c) => {
    const { peerId } = await readJson(c, ConnectRequest)
    return c.json(await agents.connect(c.get('user'), c.req.param('name'), peerId))
  })

  app.get('/api/v1/builds/:id', auth, async (c) =>
    c.json(await workspaces.build(c.get('user'), c.req.param('id'))),
  )

  app.get('/api/v1/builds/:id/logs', auth, async (c) => {
    const build = await workspaces.build(c.get('user'), c.req.param('id'))
    const follow = ['true', '1'].includes(c.req.query('follow') ?? '')
    const requestId = c.get('requestId')
    c.header('content-type', 'application/x-ndjson')
    c.header('cache-control', 'no-store')
    return stream(
      c,
      (out) => streamBuildLogs(out, { store, hub, build, follow }),
      async (err) => log.error({ err, request_id: requestId }, 'stream build logs'),
    )
  })

  app.post('/api/v1/agent/register', async (c) => {
    const token = bearerToken(c)
    const request = await readJson(c, AgentRegisterRequest)
    return c.json(await agents.register(token, request))
  })
}
