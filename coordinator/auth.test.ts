import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MINUTE, SECOND } from '../sdk/config.ts'
import { SESSION_TTL } from './constants.ts'
import { PASSWORD, testCoordinator, type TestCoordinator } from './testing.ts'

/** A clock the test moves by hand. */
function clock() {
  let ms = Date.now()
  return { now: () => ms, advance: (by: number) => (ms += by) }
}

describe('API tokens and session expiry', () => {
  const time = clock()
  let t: TestCoordinator
  let owner: string

  beforeAll(async () => {
    t = await testCoordinator({ now: time.now })
    owner = await t.owner()
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should show a new token once, list it without the secret, and note its last use', async () => {
    const created = await t.call('POST', '/api/v1/tokens', {
      token: owner,
      body: { name: 'ci', lifetimeSeconds: 3600 },
    })
    expect(created.status).toBe(201)
    const token = created.json.token as string
    expect(token).toMatch(/^cmt_[A-Za-z0-9_-]{43}$/)
    expect(created.json.expiresAt).toBe(new Date(time.now() + 3600 * SECOND).toISOString())

    expect((await t.call('GET', '/api/v1/workspaces', { token })).status).toBe(200)
    const list = await t.call('GET', '/api/v1/tokens', { token: owner })
    expect(list.json).toEqual([
      {
        name: 'ci',
        createdAt: created.json.createdAt,
        expiresAt: created.json.expiresAt,
        lastUsedAt: new Date(time.now()).toISOString(),
      },
    ])
    expect(list.text).not.toContain(token)

    const again = await t.call('POST', '/api/v1/tokens', { token: owner, body: { name: 'ci' } })
    expect(again.status).toBe(409)
    expect(again.json.code).toBe('MESH_TOKEN_EXISTS')
  })

  it('should refuse a deleted API token on the very next request', async () => {
    const token = (await t.call('POST', '/api/v1/tokens', { token: owner, body: { name: 'gone' } }))
      .json.token
    expect((await t.call('GET', '/api/v1/users/me', { token })).status).toBe(200)
    expect((await t.call('DELETE', '/api/v1/tokens/gone', { token: owner })).status).toBe(204)
    const res = await t.call('GET', '/api/v1/users/me', { token })
    expect(res.status).toBe(401)
    expect(res.json.code).toBe('MESH_UNAUTHENTICATED')
    const missing = await t.call('DELETE', '/api/v1/tokens/gone', { token: owner })
    expect(missing.json.code).toBe('MESH_TOKEN_NOT_FOUND')
  })

  it('should refuse an expired API token and an expired session', async () => {
    const token = (
      await t.call('POST', '/api/v1/tokens', {
        token: owner,
        body: { name: 'short', lifetimeSeconds: 60 },
      })
    ).json.token
    const session = await t.login('alice')
    expect((await t.call('GET', '/api/v1/users/me', { token })).status).toBe(200)

    time.advance(61 * SECOND)
    expect((await t.call('GET', '/api/v1/users/me', { token })).status).toBe(401)
    expect((await t.call('GET', '/api/v1/users/me', { token: session })).status).toBe(200)

    time.advance(SESSION_TTL)
    const expired = await t.call('GET', '/api/v1/users/me', { token: session })
    expect(expired.status).toBe(401)
    expect(expired.json.code).toBe('MESH_UNAUTHENTICATED')
  })

  it('should refuse token lifetimes out of range and names that break the rule', async () => {
    owner = await t.login('alice') // the old session expired above
    for (const body of [
      { name: 'x', lifetimeSeconds: 10 },
      { name: 'x', lifetimeSeconds: 10 * 365 * 24 * 3600 },
      { name: 'Bad Name' },
    ]) {
      const res = await t.call('POST', '/api/v1/tokens', { token: owner, body })
      expect(res.status, JSON.stringify(body)).toBe(400)
    }
  })
})

describe('login limits', () => {
  const time = clock()
  let t: TestCoordinator
  let owner: string

  beforeAll(async () => {
    t = await testCoordinator({ now: time.now, loginLimits: { addressBurst: 1000 } })
    owner = await t.owner()
    await t.user(owner, 'bob')
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  const attempt = (username: string, password: string, address?: string) =>
    t.call('POST', '/api/v1/users/login', { body: { username, password }, address })

  it('should lock a login after ten wrong passwords in a row, leaving other users alone', async () => {
    for (let i = 0; i < 10; i++) {
      const res = await attempt('bob', `wrong ${i}`)
      expect(res.json.code, `attempt ${i + 1}`).toBe('MESH_BAD_CREDENTIALS')
    }

    // Locked: even the right password is refused, by username and by email.
    for (const login of ['bob', 'bob@example.com']) {
      const locked = await attempt(login, PASSWORD)
      expect(locked.status).toBe(429)
      expect(locked.json.code).toBe('MESH_LOGIN_LOCKED')
      expect(locked.json.message).toMatch(/try again in \d+ s/)
      expect(Number(locked.headers.get('retry-after'))).toBe(15 * 60)
      expect(locked.json.retryAfterSeconds).toBe(15 * 60)
    }

    // Alice, from the same address, is unaffected.
    expect((await attempt('alice', PASSWORD)).status).toBe(200)

    time.advance(15 * MINUTE)
    expect((await attempt('bob', PASSWORD)).status).toBe(200)
  })

  it('should count only wrong passwords in a row: a success starts the count again', async () => {
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 9; i++) await attempt('bob', 'wrong')
      time.advance(MINUTE) // let the per-login rate limit refill
      expect((await attempt('bob', PASSWORD)).status).toBe(200)
    }
  })

  it('should lock unknown names too, so answers do not tell which names exist', async () => {
    for (let i = 0; i < 10; i++) await attempt('nobody', 'wrong')
    expect((await attempt('nobody', 'wrong')).json.code).toBe('MESH_LOGIN_LOCKED')
  })

  it('should rate-limit an address that tries too fast, and not its neighbours', async () => {
    const limited = await testCoordinator({ now: time.now, loginLimits: { addressBurst: 3 } })
    try {
      const token = await limited.owner() // one attempt from no address
      expect(token).toMatch(/^cms_/)
      for (let i = 0; i < 3; i++) {
        const res = await limited.call('POST', '/api/v1/users/login', {
          body: { username: 'alice', password: PASSWORD },
          address: '127.0.0.2',
        })
        expect(res.status).toBe(200)
      }
      const refused = await limited.call('POST', '/api/v1/users/login', {
        body: { username: 'alice', password: PASSWORD },
        address: '127.0.0.2',
      })
      expect(refused.status).toBe(429)
      expect(refused.json.code).toBe('MESH_RATE_LIMITED')
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0)

      const neighbour = await limited.call('POST', '/api/v1/users/login', {
        body: { username: 'alice', password: PASSWORD },
        address: '127.0.0.3',
      })
      expect(neighbour.status).toBe(200)
    } finally {
      await limited.cleanup()
    }
  })
})
