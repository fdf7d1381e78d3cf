import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AuditEntry } from '../sdk/api-types.ts'
import { PASSWORD, templateBody, testCoordinator, type TestCoordinator } from './testing.ts'

describe('audit log', () => {
  let t: TestCoordinator
  let owner: string
  let auditor: string
  let member: string

  const entries = async (query = ''): Promise<AuditEntry[]> => {
    const res = await t.call('GET', `/api/v1/audit${query}`, { token: auditor })
    expect(res.status, res.text).toBe(200)
    return res.json
  }

  beforeAll(async () => {
    t = await testCoordinator()
    owner = await t.owner()
    auditor = await t.user(owner, 'audra', ['auditor'])
    member = await t.user(owner, 'bob')
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should record who changed what, from where, and whether it worked', async () => {
    await t.call('POST', '/api/v1/templates/local/versions', {
      token: owner,
      body: templateBody(),
      address: '127.0.0.9',
    })
    const denied = await t.call('POST', '/api/v1/templates/nope/versions', {
      token: member,
      body: templateBody(),
    })
    expect(denied.status).toBe(403)

    const [forbidden, pushed] = await entries('?action=template.push')
    expect(pushed).toMatchObject({
      actor: 'alice',
      action: 'template.push',
      target: 'template:local',
      address: '127.0.0.9',
      result: 'success',
      status: 201,
    })
    expect(Date.parse(pushed!.time)).toBeGreaterThan(Date.now() - 60_000)
    expect(forbidden).toMatchObject({
      actor: 'bob',
      target: 'template:nope',
      result: 'failure',
      status: 403,
      code: 'MESH_FORBIDDEN',
      address: 'unknown',
    })
  })

  it('should record logins, failed ones under the name that was tried, never the password', async () => {
    await t.call('POST', '/api/v1/users/login', { body: { username: 'bob', password: 'guess' } })
    const [failed] = await entries('?action=session.login')
    expect(failed).toMatchObject({ actor: 'bob', result: 'failure', code: 'MESH_BAD_CREDENTIALS' })
    const text = (await t.call('GET', '/api/v1/audit?limit=1000', { token: auditor })).text
    expect(text).not.toContain('guess')
    expect(text).not.toContain(PASSWORD)
  })

  it('should filter by user, action prefix and time, and page newest first', async () => {
    const mark = new Date().toISOString()
    await new Promise((r) => setTimeout(r, 5))
    for (const name of ['a', 'b', 'c']) {
      await t.call('POST', '/api/v1/tokens', { token: member, body: { name } })
    }

    const mine = await entries(`?user=bob&since=${encodeURIComponent(mark)}`)
    expect(mine.map((e) => e.target)).toEqual(['token:bob/c', 'token:bob/b', 'token:bob/a'])
    expect((await entries('?action=token.')).length).toBe(3)
    expect((await entries('?action=token')).length).toBe(0)

    const page = await t.call('GET', '/api/v1/audit?limit=2', { token: auditor })
    expect(page.json).toHaveLength(2)
    expect(page.headers.get('x-next-offset')).toBe('2')
    const next = await entries('?limit=2&offset=2')
    expect(next[0]!.id < page.json[1].id).toBe(true)

    const bad = await t.call('GET', '/api/v1/audit?since=yesterday', { token: auditor })
    expect(bad.json.code).toBe('MESH_VALIDATION')
  })

  it('should offer no way to edit or delete entries', async () => {
    for (const method of ['PUT', 'DELETE', 'POST', 'PATCH']) {
      const res = await t.call(method, '/api/v1/audit', { token: owner, body: {} })
      expect(res.status, method).toBe(404)
    }
  })

  it('should keep ids growing across a restart', async () => {
    const before = await entries('?limit=1')
    await t.close()
    const again = await testCoordinator({ dataDir: t.dataDir })
    try {
      const token = await again.login('alice')
      await again.call('POST', '/api/v1/tokens', { token, body: { name: 'after' } })
      const res = await again.call('GET', '/api/v1/audit?limit=1', { token })
      expect(res.json[0].target).toBe('token:alice/after')
      expect(res.json[0].id > before[0]!.id).toBe(true)
    } finally {
      await again.close()
    }
  })
})
