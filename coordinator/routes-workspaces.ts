/** Routes for templates, workspaces, builds and their logs, agents and tickets. */
import { stream } from 'hono/streaming'
import { z } from 'zod'
import {
  AgentLogsQuery,
  AgentLogsRequest,
  AgentRegisterRequest,
  AgentRegisterResponse,
  AgentReportRequest,
  AgentStartupResponse,
  Build,
  BuildLogsQuery,
  ConnectRequest,
  ConnectResponse,
  CreateBuildRequest,
  CreateWorkspaceRequest,
  CreateWorkspaceResponse,
  ListQuery,
  OwnerQuery,
  PushTemplateRequest,
  Template,
  TemplateVersion,
  Workspace,
  WorkspaceListQuery,
} from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import { streamBuildLogs } from './build-logs.ts'
import type { Coordinator } from './coordinator.ts'
import { bearerToken, setNextPage, slicePage, type AppContext } from './http.ts'
import { can } from './rbac.ts'
import type { UserRecord } from './records.ts'
import { route, type AnyRoute } from './routes.ts'

const TEMPLATES = 'Templates'
const WORKSPACES = 'Workspaces'
const AGENTS = 'Agents'

export function templateRoutes(coordinator: Coordinator): AnyRoute[] {
  const { templates } = coordinator

  return [
    route({
      method: 'GET',
      path: '/api/v1/templates',
      operationId: 'listTemplates',
      summary: 'List templates',
      tag: TEMPLATES,
      auth: 'session',
      action: 'template:read',
      query: ListQuery,
      paginated: true,
      response: z.array(Template),
      handler: async (c, { query }) => slicePage(c, query, await templates.list()),
    }),

    route({
      method: 'POST',
      path: '/api/v1/templates/:name/versions',
      operationId: 'pushTemplateVersion',
      summary: 'Push a new version of a template (creating the template) and make it active',
      tag: TEMPLATES,
      auth: 'session',
      action: 'template:write',
      body: PushTemplateRequest,
      response: TemplateVersion,
      status: 201,
      audit: 'template.push',
      target: (c) => `template:${c.req.param('name') ?? ''}`,
      handler: async (c, { body }) =>
        templates.push(c.req.param('name') ?? '', body, c.get('user')),
    }),

    route({
      method: 'GET',
      path: '/api/v1/templates/:name/versions',
      operationId: 'listTemplateVersions',
      summary: "A template's versions, oldest first",
      tag: TEMPLATES,
      auth: 'session',
      action: 'template:read',
      query: ListQuery,
      paginated: true,
      response: z.array(TemplateVersion),
      handler: async (c, { query }) =>
        slicePage(c, query, await templates.versions(c.req.param('name') ?? '')),
    }),
  ]
}

export function workspaceRoutes(coordinator: Coordinator): AnyRoute[] {
  const { workspaces, agents, users, store, hub, log } = coordinator

  /** The user whose workspace the request names: `?owner=`, else the caller. */
  async function ownerOf(c: AppContext): Promise<UserRecord> {
    const name = c.req.query('owner')
    const caller = c.get('user')
    if (name === undefined || name === caller.username) return caller
    const owner = await users.byName(name)
    if (owner === undefined) {
      throw new MeshError('MESH_USER_NOT_FOUND', `User ${JSON.stringify(name)} does not exist.`)
    }
    return owner
  }

  const workspaceTarget = (c: AppContext): string =>
    `workspace:${c.req.query('owner') ?? c.get('user').username}/${c.req.param('name') ?? ''}`

  /** A build the caller may see: their own, or anyone's with workspace:read-any. */
  const visibleBuild = (c: AppContext) =>
    workspaces.build(
      c.get('user'),
      c.req.param('id') ?? '',
      can(c.get('user').roles, 'workspace:read-any'),
    )

  return [
    route({
      method: 'GET',
      path: '/api/v1/workspaces',
      operationId: 'listWorkspaces',
      summary:
        "Your workspaces by name; `?owner=` for one user's, `?all=true` for everyone's by owner",
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:read',
      anyAction: 'workspace:read-any',
      subject: (c) => (c.req.query('all') === 'true' ? '' : c.req.query('owner')),
      query: WorkspaceListQuery,
      paginated: true,
      response: z.array(Workspace),
      handler: async (c, { query }) => {
        const page =
          query.all === 'true'
            ? await workspaces.listAll(query)
            : await workspaces.list(await ownerOf(c), query)
        setNextPage(c, query, page.more)
        return page.items
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/workspaces',
      operationId: 'createWorkspace',
      summary: 'Create a workspace of yours and start its first build',
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:write',
      body: CreateWorkspaceRequest,
      response: CreateWorkspaceResponse,
      status: 201,
      audit: 'workspace.create',
      target: (c, body) => `workspace:${c.get('user').username}/${body?.name ?? ''}`,
      handler: async (c, { body }) => workspaces.create(c.get('user'), body),
    }),

    route({
      method: 'GET',
      path: '/api/v1/workspaces/:name',
      operationId: 'getWorkspace',
      summary: 'A workspace of yours, or of `?owner=`',
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:read',
      anyAction: 'workspace:read-any',
      query: OwnerQuery,
      response: Workspace,
      handler: async (c) => workspaces.get(await ownerOf(c), c.req.param('name') ?? ''),
    }),

    route({
      method: 'POST',
      path: '/api/v1/workspaces/:name/builds',
      operationId: 'createBuild',
      summary: 'Start, stop or delete a workspace: queues a build',
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:write',
      anyAction: 'workspace:write-any',
      query: OwnerQuery,
      body: CreateBuildRequest,
      response: Build,
      status: 201,
      audit: 'workspace.build',
      target: workspaceTarget,
      handler: async (c, { body }) =>
        workspaces.createBuild(await ownerOf(c), c.req.param('name') ?? '', body.transition),
    }),

    route({
      method: 'POST',
      path: '/api/v1/workspaces/:name/connect',
      operationId: 'connectWorkspace',
      summary: "A ticket from the client's peer to the workspace's agent, with its addresses",
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:connect',
      anyAction: 'workspace:connect-any',
      query: OwnerQuery,
      body: ConnectRequest,
      response: ConnectResponse,
      audit: 'workspace.connect',
      target: workspaceTarget,
      handler: async (c, { body }) =>
        agents.connect(c.get('user'), await ownerOf(c), c.req.param('name') ?? '', body.peerId),
    }),

    route({
      method: 'GET',
      path: '/api/v1/workspaces/:name/agent/logs',
      operationId: 'getAgentLogs',
      summary:
        "The workspace agent's log (its startup script's output) as NDJSON AgentLogLines; " +
        '`?follow=true` keeps streaming new lines',
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:read',
      anyAction: 'workspace:read-any',
      query: AgentLogsQuery,
      produces: 'application/x-ndjson',
      handler: async (c, { query }) => {
        const ws = await workspaces.record(await ownerOf(c), c.req.param('name') ?? '')
        const follow = query.follow === 'true' || query.follow === '1'
        const requestId = c.get('requestId')
        c.header('content-type', 'application/x-ndjson')
        c.header('cache-control', 'no-store')
        return stream(
          c,
          (out) => agents.streamLogs(out, ws, follow),
          async (err) => log.error({ err, request_id: requestId }, 'stream agent logs'),
        )
      },
    }),

    route({
      method: 'GET',
      path: '/api/v1/builds/:id',
      operationId: 'getBuild',
      summary: "A build of yours (anyone's with workspace:read-any)",
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:read',
      response: Build,
      handler: async (c) => visibleBuild(c),
    }),

    route({
      method: 'GET',
      path: '/api/v1/builds/:id/logs',
      operationId: 'getBuildLogs',
      summary: "A build's log as NDJSON BuildLogEvents; `?follow=true` streams until it ends",
      tag: WORKSPACES,
      auth: 'session',
      action: 'workspace:read',
      query: BuildLogsQuery,
      produces: 'application/x-ndjson',
      handler: async (c, { query }) => {
        const build = await visibleBuild(c)
        const follow = query.follow === 'true' || query.follow === '1'
        const requestId = c.get('requestId')
        c.header('content-type', 'application/x-ndjson')
        c.header('cache-control', 'no-store')
        return stream(
          c,
          (out) => streamBuildLogs(out, { store, hub, build, follow }),
          async (err) => log.error({ err, request_id: requestId }, 'stream build logs'),
        )
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/agent/register',
      operationId: 'registerAgent',
      summary:
        'Register a workspace agent (its heartbeat), authenticated with the agent token; ' +
        'answers the ticket key, relays and revoked client peers',
      tag: AGENTS,
      auth: 'agent',
      body: AgentRegisterRequest,
      response: AgentRegisterResponse,
      handler: async (c, { body }) => agents.register(bearerToken(c), body),
    }),

    route({
      method: 'GET',
      path: '/api/v1/agent/startup',
      operationId: 'agentStartup',
      summary:
        "The agent's startup script, from its start build's outputs; " +
        '`ready: false` while that build runs',
      tag: AGENTS,
      auth: 'agent',
      response: AgentStartupResponse,
      handler: async (c) => agents.startup(bearerToken(c)),
    }),

    route({
      method: 'POST',
      path: '/api/v1/agent/report',
      operationId: 'reportAgent',
      summary: "The agent's lifecycle state, stats and listening ports; only the latest is kept",
      tag: AGENTS,
      auth: 'agent',
      body: AgentReportRequest,
      status: 204,
      handler: async (c, { body }) => {
        await agents.report(bearerToken(c), body)
        return c.body(null, 204)
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/agent/logs',
      operationId: 'appendAgentLogs',
      summary: "Lines of the agent's log (startup script output); capped per start",
      tag: AGENTS,
      auth: 'agent',
      body: AgentLogsRequest,
      response: z.object({ stored: z.number().int() }),
      handler: async (c, { body }) => agents.appendLogs(bearerToken(c), body),
    }),
  ]
}
