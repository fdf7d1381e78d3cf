/**
 * Thousands of malformed and random requests to every route of the table:
 * bad JSON, huge bodies, unknown fields, wrong types, unicode and over-long
 * names in paths, queries and bodies, odd headers and methods. The server
 * must never answer 5xx, never show a stack trace, and keep serving.
 * Deterministic: a seeded generator, so a failure can be replayed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { routeTable } from './api.ts'
import type { AnyRoute } from './routes.ts'
import { PASSWORD, templateBody, testCoordinator, type TestCoordinator } from './testing.ts'

const REQUESTS = 3000

/** mulberry32: small, seeded, good enough to pick cases. */
function generator(seed: number) {
  let a = seed
  const next = (): number => {
    a = (a + 0x6d2b79f5) | 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
  const int = (n: number): number => Math.floor(next() * n)
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!
  return { next, int, pick }
}

type Random = ReturnType<typeof generator>

const STRINGS = [
  '',
  ' ',
  'dev',
  'a'.repeat(33),
  'x'.repeat(5000),
  'ünïcødé',
  '名前',
  '🦀🦀🦀',
  '\u0000',
  '\u202e',
  '../../etc/passwd',
  '%00',
  '%',
  '%E0%A4%A',
  'null',
  'me',
  'first',
  'alice',
  '<script>',
  "'; DROP TABLE users; --",
  '-',
  'a--b',
  'UPPER',
  '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq',
  'cms_' + 'A'.repeat(43),
  'cmt_' + 'A'.repeat(43),
  'cma_' + 'A'.repeat(43),
]

function randomValue(r: Random, depth = 0): unknown {
  switch (r.int(depth > 2 ? 6 : 9)) {
    case 0:
      return r.pick(STRINGS)
    case 1:
      return r.pick([0, -1, 1.5, 1e308, -1e308, 2 ** 53, Number.MAX_SAFE_INTEGER, 60, 3600])
    case 2:
      return r.pick([true, false, null])
    case 3:
      return r.pick(['start', 'stop', 'delete', 'owner', 'member', 'user-admin'])
    case 4:
      return String.fromCodePoint(
        ...Array.from({ length: r.int(40) }, () => r.int(0x10ffff)),
      ).replace(/[\ud800-\udfff]/g, '')
    case 5:
      return r.pick(STRINGS) + r.int(1000)
    case 6:
      return Array.from({ length: r.int(5) }, () => randomValue(r, depth + 1))
    default: {
      const out: Record<string, unknown> = {}
      const keys = ['name', 'username', 'password', 'email', 'roles', 'files', 'transition']
      keys.push('peerId', 'addrs', 'version', 'template', 'parameters', '__proto__', 'constructor')
      for (let i = r.int(5); i > 0; i--) out[r.pick(keys)] = randomValue(r, depth + 1)
      return out
    }
  }
}

/** A body shaped like the route's own, with one thing wrong or extra. */
function mutatedBody(r: Random, route: AnyRoute): unknown {
  const base = r.pick([
    { username: 'fuzz', email: 'fuzz@example.com', password: PASSWORD },
    { name: 'fuzz', template: 'local', parameters: { cpu: '2' } },
    { transition: 'start' },
    { peerId: '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq', addrs: [], version: '1' },
    { roles: ['member'] },
    { oldPassword: PASSWORD, password: PASSWORD },
    { name: 'fuzz', lifetimeSeconds: 3600 },
    templateBody(),
  ]) as Record<string, unknown>
  const body: Record<string, unknown> = { ...base }
  const keys = Object.keys(body)
  switch (r.int(4)) {
    case 0:
      body[r.pick(keys)] = randomValue(r)
      break
    case 1:
      body[`unknown_${r.int(10)}`] = randomValue(r)
      break
    case 2:
      delete body[r.pick(keys)]
      break
    default:
      if (route.operationId === 'pushTemplateVersion') {
        body.files = [{ path: r.pick(STRINGS), content: r.pick(['!!', 'AAAA', '', '====']) }]
      }
  }
  return body
}

function rawBody(r: Random, route: AnyRoute): string | undefined {
  switch (r.int(9)) {
    case 0:
      return undefined
    case 1:
      return r.pick(['{', '{"a":', 'nul', '[1,2', '"\\ud800"', '{"a":1}}', '\u0000', '1e999'])
    case 2:
      return JSON.stringify(randomValue(r))
    case 3:
      // Over the 1 MiB limit (16 MiB for template pushes is exercised once, below).
      return '{"name":"' + 'x'.repeat(1024 * 1024 + r.int(100)) + '"}'
    case 4:
      return '[' + '['.repeat(5000) + ']'.repeat(5000) + ']'
    default:
      return JSON.stringify(mutatedBody(r, route))
  }
}

function randomPath(r: Random, route: AnyRoute): string {
  let path = route.path.replace(/:[A-Za-z_]\w*/g, () => {
    const value = r.pick(STRINGS)
    return r.next() < 0.5 ? encodeURIComponent(value) : value.replaceAll('/', '%2F')
  })
  if (r.next() < 0.4) {
    const keys = ['limit', 'offset', 'owner', 'all', 'follow', 'since', 'user', 'action', 'x']
    const parts = Array.from({ length: 1 + r.int(3) }, () => {
      const value = r.pick([...STRINGS, '-1', '0', '1001', '1e9', 'true', '2024-01-01T00:00:00Z'])
      return `${r.pick(keys)}=${encodeURIComponent(value)}`
    })
    path += '?' + parts.join('&')
  }
  if (r.next() < 0.05) path += r.pick(['/', '//', '/extra', '?', '#x'])
  return path
}

describe('fuzzing every route', () => {
  let t: TestCoordinator
  let tokens: string[]

  beforeAll(async () => {
    t = await testCoordinator()
    const owner = await t.owner()
    const member = await t.user(owner, 'bob')
    await t.call('POST', '/api/v1/templates/local/versions', { token: owner, body: templateBody() })
    // API tokens: they survive a fuzzed logout, so most requests get past authentication.
    const api = async (token: string): Promise<string> =>
      (await t.call('POST', '/api/v1/tokens', { token, body: { name: 'fuzz' } })).json.token
    tokens = [await api(owner), await api(member)]
  })

  afterAll(async () => {
    await t.cleanup()
  })

  it(`should answer ${REQUESTS} malformed requests without a 5xx or a stack trace`, async () => {
    const r = generator(0xc0de)
    const routes = routeTable(t.coordinator)
    const methods = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD']
    const failures: string[] = []
    const statuses = new Map<number, number>()

    for (let i = 0; i < REQUESTS; i++) {
      const route = routes[i % routes.length]!
      const method = r.next() < 0.9 ? route.method : r.pick(methods)
      const path = randomPath(r, route)
      const headers: Record<string, string> = {}
      const auth = r.int(10)
      if (auth < 6) headers.authorization = `Bearer ${r.pick(tokens)}`
      else if (auth < 8)
        headers.authorization = r.pick(['Bearer', 'Basic x', 'Bearer a b', 'x'.repeat(9000)])
      const body = method === 'GET' || method === 'HEAD' ? undefined : rawBody(r, route)
      if (body !== undefined) {
        headers['content-type'] = r.pick([
          'application/json',
          'application/json; charset=utf-8',
          'text/plain',
          'application/x-www-form-urlencoded',
          'application/vnd.api+json',
        ])
      }

      let status: number
      let text: string
      try {
        const res = await t.app.request(path, { method, headers, body })
        status = res.status
        text = await res.text()
      } catch (err) {
        failures.push(`#${i} ${method} ${path.slice(0, 80)}: threw ${String(err)}`)
        continue
      }
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
      if (status >= 500 || text.includes('    at ') || /\bError: /.test(text)) {
        failures.push(`#${i} ${method} ${path.slice(0, 80)} → ${status} ${text.slice(0, 200)}`)
      }
    }

    expect(failures).toEqual([])
    // The fuzz reached past validation, not just the front door.
    expect(statuses.get(200) ?? 0).toBeGreaterThan(100)
    expect(statuses.get(400) ?? 0).toBeGreaterThan(100)
    expect(statuses.get(413) ?? 0).toBeGreaterThan(10)
  })

  it('should refuse a template push over 16 MiB and keep serving', async () => {
    const huge = JSON.stringify({
      files: [{ path: 'main.tf', content: 'A'.repeat(17 * 1024 * 1024) }],
    })
    const res = await t.call('POST', '/api/v1/templates/big/versions', {
      token: tokens[0],
      body: huge,
    })
    expect(res.status).toBe(413)

    expect((await t.call('GET', '/healthz')).text).toBe('ok')
    expect((await t.call('GET', '/readyz')).status).toBe(200)
    const me = await t.call('GET', '/api/v1/users/me', { token: tokens[0] })
    expect(me.json.username).toBe('alice')
  })
})
