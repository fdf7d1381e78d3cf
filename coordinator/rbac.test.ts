/**
 * Walks every role against every route of the route table and checks the
 * answer against the permission table: 403 MESH_FORBIDDEN exactly when the
 * table says no. Routes that act on another user's things (`anyAction`)
 * are walked twice, on the caller's own things and on someone else's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ROLES, type Role } from '../sdk/api-types.ts'
import { routeTable } from './api.ts'
import { ACTIONS, can, PERMISSIONS } from './rbac.ts'
import type { AnyRoute } from './routes.ts'
import {
  PASSWORD,
  templateBody,
  testCoordinator,
  waitForBuild,
  type TestCoordinator,
} from './testing.ts'

type Mode = 'own' | 'other'

interface Sample {
  path: string
  body?: unknown
}

interface Context {
  role: Role
  mode: Mode
  /** A build of the caller's. */
  buildId: string
  n: number
}

/** A request for every route; the test fails for a route missing here. */
const SAMPLES: Record<string, (ctx: Context) => Sample> = {
  healthz: () => ({ path: '/healthz' }),
  readyz: () => ({ path: '/readyz' }),
  metrics: () => ({ path: '/metrics' }),
  getBuildInfo: () => ({ path: '/api/v1/buildinfo' }),
  getOpenApi: () => ({ path: '/api/v1/openapi.json' }),
  listAuditLog: () => ({ path: '/api/v1/audit?limit=5' }),
  getFirstUserStatus: () => ({ path: '/api/v1/users/first' }),
  createFirstUser: () => ({
    path: '/api/v1/users/first',
    body: { username: 'late', email: 'late@example.com', password: PASSWORD },
  }),
  login: ({ role }) => ({
    path: '/api/v1/users/login',
    body: { username: `as-${role}`, password: PASSWORD },
  }),
  logout: () => ({ path: '/api/v1/users/logout' }),
  getMe: () => ({ path: '/api/v1/users/me' }),
  listUsers: () => ({ path: '/api/v1/users?limit=2' }),
  createUser: ({ role, mode, n }) => ({
    path: '/api/v1/users',
    body: {
      username: `new-${n}`,
      email: `new-${n}-${role}-${mode}@example.com`,
      password: PASSWORD,
    },
  }),
  getUser: () => ({ path: '/api/v1/users/victim' }),
  setUserRoles: () => ({ path: '/api/v1/users/victim/roles', body: { roles: ['member'] } }),
  suspendUser: () => ({ path: '/api/v1/users/victim/suspend' }),
  activateUser: () => ({ path: '/api/v1/users/victim/activate' }),
  deleteUser: () => ({ path: '/api/v1/users/victim' }),
  changePassword: ({ mode }) => ({
    path: `/api/v1/users/${mode === 'own' ? 'me' : 'victim'}/password`,
    body: { oldPassword: PASSWORD, password: PASSWORD },
  }),
  listApiTokens: () => ({ path: '/api/v1/tokens' }),
  createApiToken: ({ n }) => ({ path: '/api/v1/tokens', body: { name: `walk-${n}` } }),
  deleteApiToken: () => ({ path: '/api/v1/tokens/nothing-here' }),
  listTemplates: () => ({ path: '/api/v1/templates' }),
  pushTemplateVersion: () => ({ path: '/api/v1/templates/walked/versions', body: templateBody() }),
  listTemplateVersions: () => ({ path: '/api/v1/templates/local/versions' }),
  listWorkspaces: ({ mode }) => ({
    path: mode === 'own' ? '/api/v1/workspaces' : '/api/v1/workspaces?owner=victim',
  }),
  createWorkspace: ({ n }) => ({
    path: '/api/v1/workspaces',
    body: { name: `walk-${n}`, template: 'local' },
  }),
  getWorkspace: ({ mode }) => ({ path: `/api/v1/workspaces/dev${owner(mode)}` }),
  createBuild: ({ mode }) => ({
    path: `/api/v1/workspaces/dev/builds${owner(mode)}`,
    body: { transition: 'start' },
  }),
  connectWorkspace: ({ mode }) => ({
    path: `/api/v1/workspaces/dev/connect${owner(mode)}`,
    body: { peerId: '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq' },
  }),
  getBuild: ({ buildId }) => ({ path: `/api/v1/builds/${buildId}` }),
  getBuildLogs: ({ buildId }) => ({ path: `/api/v1/builds/${buildId}/logs` }),
  getAgentLogs: ({ mode }) => ({ path: `/api/v1/workspaces/dev/agent/logs${owner(mode)}` }),
  agentStartup: () => ({ path: '/api/v1/agent/startup' }),
  reportAgent: () => ({ path: '/api/v1/agent/report', body: { lifecycle: 'ready' } }),
  appendAgentLogs: () => ({
    path: '/api/v1/agent/logs',
    body: { buildId: 'x', lines: [{ time: '2026-01-01T00:00:00Z', stream: 'stdout', text: 'hi' }] },
  }),
  registerAgent: () => ({
    path: '/api/v1/agent/register',
    body: {
      peerId: '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq',
      addrs: [],
      version: 'x',
    },
  }),
}

const EVERYONE = [...ROLES]
const USER_ADMINS = ['owner', 'user-admin']

/**
 * Who may call each route, said a second time, independently of the
 * route table: a route that declares the wrong action fails here.
 * `other` is for acting on another user's things.
 */
const EXPECTED: Record<string, { own: readonly string[]; other?: readonly string[] }> = {
  getMe: { own: EVERYONE },
  logout: { own: EVERYONE },
  changePassword: { own: EVERYONE, other: USER_ADMINS },
  listApiTokens: { own: EVERYONE },
  createApiToken: { own: EVERYONE },
  deleteApiToken: { own: EVERYONE },
  listUsers: { own: USER_ADMINS },
  createUser: { own: USER_ADMINS },
  getUser: { own: USER_ADMINS },
  setUserRoles: { own: USER_ADMINS },
  suspendUser: { own: USER_ADMINS },
  activateUser: { own: USER_ADMINS },
  deleteUser: { own: USER_ADMINS },
  listTemplates: { own: EVERYONE },
  listTemplateVersions: { own: EVERYONE },
  pushTemplateVersion: { own: ['owner', 'template-admin'] },
  listWorkspaces: { own: EVERYONE, other: ['owner'] },
  createWorkspace: { own: EVERYONE },
  getWorkspace: { own: EVERYONE, other: ['owner'] },
  createBuild: { own: EVERYONE, other: ['owner'] },
  connectWorkspace: { own: EVERYONE, other: ['owner'] },
  getBuild: { own: EVERYONE },
  getBuildLogs: { own: EVERYONE },
  getAgentLogs: { own: EVERYONE, other: ['owner'] },
  listAuditLog: { own: ['owner', 'auditor'] },
}

function owner(mode: Mode): string {
  return mode === 'own' ? '' : '?owner=victim'
}

describe('RBAC: every role against every route', () => {
  let t: TestCoordinator
  let routes: AnyRoute[]
  const tokens = new Map<Role, string>()
  const builds = new Map<Role, string>()

  async function login(username: string): Promise<string> {
    const res = await t.call('POST', '/api/v1/users/login', {
      body: { username, password: PASSWORD },
    })
    expect(res.status, res.text).toBe(200)
    return res.json.sessionToken
  }

  async function ownWorkspace(token: string): Promise<string> {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    expect(res.status, res.text).toBe(201)
    await waitForBuild(t, token, res.json.build.id)
    return res.json.build.id
  }

  beforeAll(async () => {
    t = await testCoordinator({ loginLimits: { addressBurst: 10_000, userBurst: 10_000 } })
    routes = routeTable(t.coordinator)
    const ownerToken = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', {
      token: ownerToken,
      body: templateBody(),
    })

    for (const username of ['victim', ...ROLES.map((r) => `as-${r}`)]) {
      const role = username === 'victim' ? 'member' : username.slice(3)
      const res = await t.call('POST', '/api/v1/users', {
        token: ownerToken,
        body: { username, email: `${username}@example.com`, password: PASSWORD, roles: [role] },
      })
      expect(res.status, res.text).toBe(201)
    }
    await ownWorkspace(await login('victim'))
    for (const role of ROLES) {
      const token = await login(`as-${role}`)
      tokens.set(role, token)
      builds.set(role, await ownWorkspace(token))
    }
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should have a permission for every action, and give the owner all of them', () => {
    for (const action of ACTIONS) {
      expect(PERMISSIONS[action].length).toBeGreaterThan(0)
      expect(can(['owner'], action), action).toBe(true)
    }
    expect(can(['member'], 'user:read')).toBe(false)
    expect(can(['auditor'], 'audit:read')).toBe(true)
    expect(can(['template-admin'], 'template:write')).toBe(true)
    expect(can(['user-admin'], 'user:delete')).toBe(true)
  })

  it('should give every session route an action from the table and every route a sample', () => {
    for (const spec of routes) {
      expect(SAMPLES[spec.operationId], spec.operationId).toBeDefined()
      if (spec.auth === 'session') expect(ACTIONS).toContain(spec.action)
      if (spec.anyAction !== undefined) expect(ACTIONS).toContain(spec.anyAction)
    }
    const ids = routes.map((r) => r.operationId)
    expect(new Set(ids).size).toBe(ids.length)
  })

  it('should give each route the roles expected of it', () => {
    for (const spec of routes) {
      if (spec.auth !== 'session') continue
      const expected = EXPECTED[spec.operationId]
      expect(expected, spec.operationId).toBeDefined()
      const own = ROLES.filter((role) => can([role], spec.action!))
      expect(own, spec.operationId).toEqual(expected!.own)
      if (spec.anyAction !== undefined || expected!.other !== undefined) {
        const other = own.filter((role) => can([role], spec.anyAction!))
        expect(other, `${spec.operationId} on others`).toEqual(expected!.other)
      }
    }
  })

  it('should answer 403 exactly where the permission table says no', async () => {
    let n = 0
    let walked = 0
    const mismatches: string[] = []

    for (const spec of routes) {
      if (spec.auth !== 'session') continue
      const modes: Mode[] = spec.anyAction === undefined ? ['own'] : ['own', 'other']
      for (const role of ROLES) {
        for (const mode of modes) {
          const sample = SAMPLES[spec.operationId]!({
            role,
            mode,
            buildId: builds.get(role)!,
            n: n++,
          })
          // Logging out ends the session: use a throwaway one.
          const token =
            spec.operationId === 'logout' ? await login(`as-${role}`) : tokens.get(role)!
          const res = await t.call(spec.method, sample.path, { token, body: sample.body })
          walked++

          const allowed =
            can([role], spec.action!) && (mode === 'own' || can([role], spec.anyAction!))
          const forbidden = res.status === 403 && res.json?.code === 'MESH_FORBIDDEN'
          const label = `${role} ${mode} ${spec.method} ${sample.path} → ${res.status} ${res.json?.code ?? ''}`
          if (allowed === forbidden || res.status === 401) mismatches.push(label)

          if (res.status < 300 && spec.response !== undefined) {
            const parsed = spec.response.safeParse(res.json)
            if (!parsed.success) mismatches.push(`${label}: response does not match its schema`)
          }
        }
      }
    }
    expect(mismatches).toEqual([])
    expect(walked).toBeGreaterThan(100)
  })

  it('should refuse session routes without a token, and agent registration with a session', async () => {
    for (const spec of routes) {
      if (spec.auth === 'none') continue
      const sample = SAMPLES[spec.operationId]!({ role: 'owner', mode: 'own', buildId: 'x', n: 0 })
      const res = await t.call(spec.method, sample.path, { body: sample.body })
      expect(res.status, spec.operationId).toBe(401)
    }
    const register = await t.call('POST', '/api/v1/agent/register', {
      token: tokens.get('owner'),
      body: SAMPLES.registerAgent!({ role: 'owner', mode: 'own', buildId: '', n: 0 }).body,
    })
    expect(register.status).toBe(401)
  })

  it('should answer public routes without a token', async () => {
    for (const spec of routes) {
      if (spec.auth !== 'none') continue
      const sample = SAMPLES[spec.operationId]!({ role: 'member', mode: 'own', buildId: '', n: 0 })
      const res = await t.call(spec.method, sample.path, { body: sample.body })
      expect([401, 403], spec.operationId).not.toContain(res.status)
      expect(res.status, spec.operationId).toBeLessThan(500)
    }
  })
})
