import { validate } from '@readme/openapi-parser'
import { Level } from 'level'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ERROR_STATUS } from '../sdk/errors.ts'
import { routeTable } from './api.ts'
import { openApiPath } from './routes.ts'
import { SCHEMA_VERSION } from './constants.ts'
import { templateBody, testCoordinator, waitForBuild, type TestCoordinator } from './testing.ts'

/**
 * The Prometheus text exposition format, line by line: HELP and TYPE
 * comments, and samples `name{label="value",...} number`. Values parse as
 * Go's ParseFloat reads them, so NaN in any case (prom-client writes `Nan`).
 */
const HELP = /^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$/
const TYPE = /^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$/
const SAMPLE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*,?\})? (-?[0-9.e+-]+|[Nn][Aa][Nn]|[+-]Inf)( -?\d+)?$/

function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '') continue
    if (line.startsWith('# HELP')) expect(line).toMatch(HELP)
    else if (line.startsWith('# TYPE')) expect(line).toMatch(TYPE)
    else {
      expect(line).toMatch(SAMPLE)
      const space = line.lastIndexOf(' ')
      samples.set(line.slice(0, space), Number(line.slice(space + 1)))
    }
  }
  return samples
}

describe('OpenAPI, metrics and probes', () => {
  let t: TestCoordinator
  let token: string

  beforeAll(async () => {
    t = await testCoordinator()
    token = await t.owner()
  })

  afterAll(async () => {
    await t.cleanup()
  })

  it('should serve an OpenAPI document that validates and lists every route', async () => {
    const res = await t.call('GET', '/api/v1/openapi.json')
    expect(res.status).toBe(200)
    const document = res.json
    await validate(structuredClone(document))
    expect(document.openapi).toBe('3.1.0')

    const listed = new Set<string>()
    for (const [path, item] of Object.entries(document.paths as Record<string, object>)) {
      for (const method of Object.keys(item)) listed.add(`${method.toUpperCase()} ${path}`)
    }
    // Every route Hono serves, not just the table: nothing served goes undocumented.
    const served = t.app.routes
      .filter((r) => r.method !== 'ALL')
      .map((r) => `${r.method} ${openApiPath(r.path)}`)
    expect(served.length).toBeGreaterThan(30)
    for (const route of served) expect(listed, route).toContain(route)
    expect(listed.size).toBe(routeTable(t.coordinator).length)

    const createUser = document.paths['/api/v1/users'].post
    expect(createUser['x-permission']).toBe('user:create')
    expect(createUser['x-roles']).toEqual(['owner', 'user-admin'])
    expect(createUser.requestBody.content['application/json'].schema.required).toContain('username')
  })

  it('should serve Prometheus metrics that parse, counting requests, builds, agents and the relay', async () => {
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: templateBody() })
    const ws = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    await waitForBuild(t, token, ws.json.build.id)
    await t.call('GET', '/api/v1/workspaces/no-such', { token })

    const res = await t.call('GET', '/metrics')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/)
    const samples = parseMetrics(res.text)

    const requests = (route: string, status: number) =>
      samples.get(
        `coder_mesh_http_requests_total{method="GET",route="${route}",status="${status}"}`,
      )
    expect(requests('/api/v1/workspaces/:name', 404)).toBe(1)
    expect(samples.get('coder_mesh_builds_total{transition="start",status="succeeded"}')).toBe(1)
    expect(samples.get('coder_mesh_builds{status="running"}')).toBe(0)
    expect(samples.get('coder_mesh_agents_connected')).toBe(0)
    expect(samples.get('coder_mesh_relay_reservations')).toBe(0)
    expect(samples.get('coder_mesh_relay_circuits')).toBe(0)
    expect(samples.has('coder_mesh_process_cpu_user_seconds_total')).toBe(true)

    await t.call('GET', '/no/such/route')
    const again = parseMetrics((await t.call('GET', '/metrics')).text)
    expect(
      again.get('coder_mesh_http_requests_total{method="GET",route="unmatched",status="404"}'),
    ).toBe(1)
  })

  it('should be ready while open and say why not once closed', async () => {
    const ready = await t.call('GET', '/readyz')
    expect([ready.status, ready.text]).toEqual([200, 'ok'])
    await t.close()
    const closed = await t.call('GET', '/readyz')
    expect(closed.status).toBe(503)
    expect(closed.json).toMatchObject({ code: 'MESH_UNAVAILABLE', detail: 'shutting down' })
    expect((await t.call('GET', '/healthz')).text).toBe('ok')
  })
})

describe('store schema', () => {
  it('should migrate a version 1 store: users gain a status', async () => {
    const t = await testCoordinator()
    const token = await t.owner()
    expect(token).toMatch(/^cms_/)
    await t.close()

    // Turn it back into a version 1 store, as an older coder-mesh left it.
    const db = new Level<string, unknown>(join(t.dataDir, 'store'), { valueEncoding: 'json' })
    const meta = db.sublevel<string, { schemaVersion: number }>('meta', { valueEncoding: 'json' })
    const users = db.sublevel<string, Record<string, unknown>>('users', { valueEncoding: 'json' })
    await meta.put('meta', { ...(await meta.get('meta'))!, schemaVersion: 1 })
    for await (const [id, user] of users.iterator()) {
      delete user.status
      await users.put(id, user)
    }
    await db.close()

    const again = await testCoordinator({ dataDir: t.dataDir })
    try {
      expect((await again.coordinator.store.meta.get('meta'))!.schemaVersion).toBe(SCHEMA_VERSION)
      for await (const user of again.coordinator.store.users.values()) {
        expect(user.status).toBe('active')
      }
      const me = await again.call('GET', '/api/v1/users/me', { token: await again.login('alice') })
      expect(me.json.status).toBe('active')
    } finally {
      await again.cleanup()
    }
  })

  it('should refuse a store from a newer coder-mesh', async () => {
    const t = await testCoordinator()
    await t.close()
    const db = new Level<string, unknown>(join(t.dataDir, 'store'), { valueEncoding: 'json' })
    const meta = db.sublevel<string, object>('meta', { valueEncoding: 'json' })
    await meta.put('meta', { schemaVersion: SCHEMA_VERSION + 1, createdAt: '' })
    await db.close()
    await expect(testCoordinator({ dataDir: t.dataDir })).rejects.toThrow(/newer/)
    await t.cleanup()
  })
})

describe('README error codes', () => {
  it('should list every code the coordinator answers with', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
    const table = readme.split('## Error codes')[1] ?? ''
    for (const [code, status] of Object.entries(ERROR_STATUS)) {
      if (status !== 0) expect(table, code).toContain(`\`${code}\``)
    }
  })
})
