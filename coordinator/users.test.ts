import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  PASSWORD,
  templateBody,
  testCoordinator,
  waitForBuild,
  type TestCoordinator,
} from './testing.ts'

describe('user administration', () => {
  let t: TestCoordinator
  let owner: string
  let admin: string

  beforeAll(async () => {
    t = await testCoordinator({ loginLimits: { addressBurst: 1000, userBurst: 1000 } })
    owner = await t.owner()
    admin = await t.user(owner, 'ursula', ['user-admin'])
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should create users as members by default and list them a page at a time', async () => {
    for (const name of ['bob', 'carol', 'dave']) {
      const res = await t.call('POST', '/api/v1/users', {
        token: admin,
        body: { username: name, email: `${name}@example.com`, password: PASSWORD },
      })
      expect(res.status).toBe(201)
      expect(res.json).toMatchObject({ username: name, roles: ['member'], status: 'active' })
      expect(res.text).not.toContain('scrypt')
    }

    const first = await t.call('GET', '/api/v1/users?limit=2', { token: admin })
    expect(first.json.map((u: { username: string }) => u.username)).toEqual(['alice', 'bob'])
    expect(first.headers.get('x-next-offset')).toBe('2')
    expect(first.headers.get('link')).toMatch(/offset=2.*rel="next"/)
    const rest = await t.call('GET', '/api/v1/users?limit=100&offset=2', { token: admin })
    expect(rest.json.map((u: { username: string }) => u.username)).toEqual([
      'carol',
      'dave',
      'ursula',
    ])
    expect(rest.headers.get('x-next-offset')).toBeNull()
  })

  it.each([
    ['a taken username', { username: 'bob', email: 'other@example.com' }, 409, 'MESH_USER_EXISTS'],
    ['a taken email', { username: 'bobby', email: 'BOB@example.com' }, 409, 'MESH_USER_EXISTS'],
    ['a reserved name', { username: 'me', email: 'me@example.com' }, 400, 'MESH_INVALID_NAME'],
    ['a bad name', { username: 'Bob!', email: 'b2@example.com' }, 400, 'MESH_INVALID_NAME'],
  ])('should refuse %s', async (_what, user, status, code) => {
    const res = await t.call('POST', '/api/v1/users', {
      token: admin,
      body: { ...user, password: PASSWORD },
    })
    expect(res.status).toBe(status)
    expect(res.json.code).toBe(code)
  })

  it('should stop a suspended user at once, and let them back in when activated', async () => {
    const bob = await t.login('bob')
    const created = await t.call('POST', '/api/v1/tokens', { token: bob, body: { name: 'ci' } })
    const apiToken = created.json.token as string
    expect((await t.call('GET', '/api/v1/users/me', { token: apiToken })).status).toBe(200)

    const suspended = await t.call('POST', '/api/v1/users/bob/suspend', { token: admin })
    expect(suspended.json.status).toBe('suspended')
    expect((await t.call('GET', '/api/v1/users/me', { token: bob })).status).toBe(401)
    const viaToken = await t.call('GET', '/api/v1/workspaces', { token: apiToken })
    expect(viaToken.status).toBe(403)
    expect(viaToken.json.code).toBe('MESH_USER_SUSPENDED')
    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'bob', password: PASSWORD },
    })
    expect(login.json.code).toBe('MESH_USER_SUSPENDED')

    await t.call('POST', '/api/v1/users/bob/activate', { token: admin })
    expect((await t.call('GET', '/api/v1/users/me', { token: apiToken })).status).toBe(200)
    expect((await t.call('GET', '/api/v1/users/me', { token: await t.login('bob') })).status).toBe(
      200,
    )
  })

  it('should keep the last active owner from being suspended, deleted or demoted', async () => {
    for (const [method, path, body] of [
      ['POST', '/api/v1/users/alice/suspend', undefined],
      ['DELETE', '/api/v1/users/alice', undefined],
      ['PUT', '/api/v1/users/alice/roles', { roles: ['member'] }],
    ] as const) {
      const res = await t.call(method, path, { token: owner, body })
      expect(res.status, path).toBe(409)
      expect(res.json.code).toBe('MESH_LAST_OWNER')
    }
  })

  it('should let only an owner make owners or change one', async () => {
    const grant = await t.call('PUT', '/api/v1/users/carol/roles', {
      token: admin,
      body: { roles: ['owner'] },
    })
    expect(grant.status).toBe(403)
    const touch = await t.call('POST', '/api/v1/users/alice/suspend', { token: admin })
    expect(touch.status).toBe(403)
    const create = await t.call('POST', '/api/v1/users', {
      token: admin,
      body: { username: 'eve', email: 'eve@example.com', password: PASSWORD, roles: ['owner'] },
    })
    expect(create.status).toBe(403)

    const roles = await t.call('PUT', '/api/v1/users/carol/roles', {
      token: admin,
      body: { roles: ['template-admin', 'member'] },
    })
    expect(roles.json.roles).toEqual(['template-admin', 'member'])
  })

  it('should refuse to delete a user who has workspaces, and delete one who has none', async () => {
    const dave = await t.login('dave')
    await t.call('POST', '/api/v1/templates/local/versions', { token: owner, body: templateBody() })
    const ws = await t.call('POST', '/api/v1/workspaces', {
      token: dave,
      body: { name: 'dev', template: 'local' },
    })
    await waitForBuild(t, dave, ws.json.build.id)
    const refused = await t.call('DELETE', '/api/v1/users/dave', { token: admin })
    expect(refused.status).toBe(409)
    expect(refused.json.code).toBe('MESH_USER_HAS_WORKSPACES')

    const carol = await t.login('carol')
    const token = (await t.call('POST', '/api/v1/tokens', { token: carol, body: { name: 'x' } }))
      .json.token
    expect((await t.call('DELETE', '/api/v1/users/carol', { token: admin })).status).toBe(204)
    expect((await t.call('GET', '/api/v1/users/me', { token: carol })).status).toBe(401)
    expect((await t.call('GET', '/api/v1/users/me', { token })).status).toBe(401)
    expect((await t.call('GET', '/api/v1/users/carol', { token: admin })).json.code).toBe(
      'MESH_USER_NOT_FOUND',
    )
  })

  it('should change your own password only with the old one, ending your other sessions', async () => {
    const here = await t.login('bob')
    const elsewhere = await t.login('bob')
    const wrong = await t.call('PUT', '/api/v1/users/me/password', {
      token: here,
      body: { oldPassword: 'not it', password: 'a new password' },
    })
    expect(wrong.json.code).toBe('MESH_BAD_CREDENTIALS')
    const missing = await t.call('PUT', '/api/v1/users/me/password', {
      token: here,
      body: { password: 'a new password' },
    })
    expect(missing.status).toBe(401)

    const ok = await t.call('PUT', '/api/v1/users/me/password', {
      token: here,
      body: { oldPassword: PASSWORD, password: 'a new password' },
    })
    expect(ok.status).toBe(204)
    expect((await t.call('GET', '/api/v1/users/me', { token: here })).status).toBe(200)
    expect((await t.call('GET', '/api/v1/users/me', { token: elsewhere })).status).toBe(401)
    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'bob', password: 'a new password' },
    })
    expect(login.status).toBe(200)

    // An admin resets it without the old one; every session of bob's ends.
    const reset = await t.call('PUT', '/api/v1/users/bob/password', {
      token: admin,
      body: { password: PASSWORD },
    })
    expect(reset.status).toBe(204)
    expect((await t.call('GET', '/api/v1/users/me', { token: here })).status).toBe(401)
  })
})
