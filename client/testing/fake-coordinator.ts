/**
 * A small stand-in for the coordinator's HTTP API, for the CLI's own tests:
 * just enough of /api/v1 to log in, push templates, run scripted builds and
 * hand out connect tickets. The real server is tested end to end in test/.
 */
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type {
  Build,
  ConnectResponse,
  PushTemplateRequest,
  Template,
  TemplateVersion,
  Transition,
  User,
  Workspace,
  WorkspaceStatus,
} from '../../sdk/api-types.ts'
import { MeshError, type ErrorCode } from '../../sdk/errors.ts'

export interface ScriptedBuild {
  lines: string[]
  status: 'succeeded' | 'failed'
  error?: string
}

export interface FakeCoordinator {
  url: string
  token: string
  users: Map<string, { user: User; password: string }>
  templates: Map<string, { template: Template; versions: TemplateVersion[] }>
  pushes: { name: string; body: PushTemplateRequest }[]
  workspaces: Map<string, Workspace>
  /** What the next builds print and how they end. */
  nextBuild: ScriptedBuild
  /** Answers connect requests; throw a MeshError to refuse. */
  onConnect: (workspace: Workspace, peerId: string) => ConnectResponse
  addWorkspace(name: string, status?: WorkspaceStatus): Workspace
  close(): Promise<void>
}

export async function startFakeCoordinator(): Promise<FakeCoordinator> {
  const builds = new Map<string, Build>()
  const buildScripts = new Map<string, ScriptedBuild>()

  const fake: FakeCoordinator = {
    url: '',
    token: 'cms_test-session-token',
    users: new Map(),
    templates: new Map(),
    pushes: [],
    workspaces: new Map(),
    nextBuild: { lines: ['Apply complete!'], status: 'succeeded' },
    onConnect: () => {
      throw new MeshError('MESH_AGENT_NOT_CONNECTED', 'No agent.')
    },
    addWorkspace(name, status = 'running') {
      const build = newBuild(name, 'start')
      build.status = 'succeeded'
      const workspace: Workspace = {
        id: randomUUID(),
        name,
        owner: 'admin',
        template: 'local',
        templateVersion: 1,
        status,
        latestBuild: build,
        agent: null,
        createdAt: new Date().toISOString(),
      }
      fake.workspaces.set(name, workspace)
      return workspace
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }

  let buildNumber = 0
  function newBuild(workspaceName: string, transition: Transition): Build {
    const build: Build = {
      id: randomUUID(),
      workspaceId: fake.workspaces.get(workspaceName)?.id ?? randomUUID(),
      workspaceName,
      number: ++buildNumber,
      transition,
      templateVersion: 1,
      status: 'running',
      createdAt: new Date().toISOString(),
    }
    builds.set(build.id, build)
    buildScripts.set(build.id, fake.nextBuild)
    return build
  }

  function finish(build: Build): void {
    const script = buildScripts.get(build.id)
    build.status = script?.status ?? 'succeeded'
    if (script?.error !== undefined) build.error = script.error
    build.finishedAt = new Date().toISOString()
    const workspace = fake.workspaces.get(build.workspaceName)
    if (workspace === undefined) return
    workspace.latestBuild = build
    if (build.status === 'failed') workspace.status = 'failed'
    else if (build.transition === 'start') workspace.status = 'running'
    else if (build.transition === 'stop') workspace.status = 'stopped'
    else fake.workspaces.delete(build.workspaceName)
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake')
    const path = url.pathname
    const method = req.method ?? 'GET'
    const body = method === 'POST' ? await readJson(req) : undefined
    const send = (status: number, value: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(value))
    }

    if (method === 'GET' && path === '/api/v1/users/first') {
      return send(200, { hasFirstUser: fake.users.size > 0 })
    }
    if (method === 'POST' && path === '/api/v1/users/first') {
      const { username, email, password } = body as Record<string, string>
      if (fake.users.size > 0) throw fail('MESH_FIRST_USER_EXISTS', 'The first user exists.')
      const user: User = {
        id: randomUUID(),
        username: username ?? '',
        email: email ?? '',
        roles: ['owner'],
        createdAt: new Date().toISOString(),
      }
      fake.users.set(user.username, { user, password: password ?? '' })
      return send(201, user)
    }
    if (method === 'POST' && path === '/api/v1/users/login') {
      const { username, password } = body as Record<string, string>
      const entry = fake.users.get(username ?? '')
      if (entry === undefined || entry.password !== password) {
        throw fail('MESH_BAD_CREDENTIALS', 'Wrong username or password.')
      }
      return send(200, { sessionToken: fake.token, user: entry.user })
    }

    if (req.headers.authorization !== `Bearer ${fake.token}`) {
      throw fail('MESH_UNAUTHENTICATED', 'You are not signed in.')
    }

    let m: RegExpExecArray | null
    if (method === 'GET' && path === '/api/v1/templates') {
      return send(
        200,
        [...fake.templates.values()].map((t) => t.template),
      )
    }
    if ((m = /^\/api\/v1\/templates\/([^/]+)\/versions$/.exec(path)) !== null) {
      const name = decodeURIComponent(m[1]!)
      if (method === 'GET') {
        const entry = fake.templates.get(name)
        if (entry === undefined) throw fail('MESH_TEMPLATE_NOT_FOUND', `No template ${name}.`)
        return send(200, entry.versions)
      }
      const push = body as PushTemplateRequest
      fake.pushes.push({ name, body: push })
      const now = new Date().toISOString()
      const entry = fake.templates.get(name) ?? {
        template: { name, activeVersion: 0, versions: 0, createdAt: now, updatedAt: now },
        versions: [],
      }
      const version: TemplateVersion = {
        template: name,
        version: entry.versions.length + 1,
        message: push.message ?? '',
        files: push.files.map((f) => f.path),
        createdBy: 'admin',
        createdAt: now,
      }
      entry.versions.push(version)
      entry.template = {
        ...entry.template,
        activeVersion: version.version,
        versions: entry.versions.length,
        updatedAt: now,
      }
      fake.templates.set(name, entry)
      return send(201, version)
    }

    if (method === 'GET' && path === '/api/v1/workspaces') {
      return send(200, [...fake.workspaces.values()])
    }
    if (method === 'POST' && path === '/api/v1/workspaces') {
      const { name, template } = body as { name: string; template: string }
      if (!fake.templates.has(template)) {
        throw fail('MESH_TEMPLATE_NOT_FOUND', `No template ${template}.`)
      }
      const workspace = fake.addWorkspace(name, 'starting')
      workspace.template = template
      const build = newBuild(name, 'start')
      workspace.latestBuild = build
      return send(201, { workspace, build })
    }
    if ((m = /^\/api\/v1\/workspaces\/([^/]+)(\/builds|\/connect)?$/.exec(path)) !== null) {
      const name = decodeURIComponent(m[1]!)
      const workspace = fake.workspaces.get(name)
      if (workspace === undefined) {
        throw fail('MESH_WORKSPACE_NOT_FOUND', `No workspace named ${name}.`)
      }
      if (m[2] === undefined && method === 'GET') return send(200, workspace)
      if (m[2] === '/builds' && method === 'POST') {
        const { transition } = body as { transition: Transition }
        const build = newBuild(name, transition)
        workspace.latestBuild = build
        workspace.status =
          transition === 'start' ? 'starting' : transition === 'stop' ? 'stopping' : 'deleting'
        return send(201, build)
      }
      if (m[2] === '/connect' && method === 'POST') {
        return send(200, fake.onConnect(workspace, (body as { peerId: string }).peerId))
      }
    }
    if ((m = /^\/api\/v1\/builds\/([^/]+)(\/logs)?$/.exec(path)) !== null) {
      const build = builds.get(decodeURIComponent(m[1]!))
      if (build === undefined) throw fail('MESH_BUILD_NOT_FOUND', 'No such build.')
      if (m[2] === undefined) return send(200, build)
      res.writeHead(200, { 'content-type': 'application/x-ndjson' })
      let seq = 0
      for (const text of buildScripts.get(build.id)?.lines ?? []) {
        const line = {
          type: 'log',
          seq: seq++,
          time: new Date().toISOString(),
          source: 'stdout',
          text,
        }
        res.write(JSON.stringify(line) + '\n')
        await new Promise((r) => setTimeout(r, 5))
      }
      if (build.status === 'running') finish(build)
      res.end(JSON.stringify({ type: 'build', build }) + '\n')
      return
    }
    throw fail('MESH_NOT_FOUND', `No route ${method} ${path}.`)
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const error = err instanceof MeshError ? err : new MeshError('MESH_INTERNAL', String(err))
      res.writeHead(error.status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(error.toJSON()))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return fake
}

function fail(code: ErrorCode, message: string): MeshError {
  return new MeshError(code, message)
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  const text = Buffer.concat(chunks).toString('utf8')
  return text === '' ? {} : JSON.parse(text)
}
