import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createApp } from './api.ts'
import { PASSWORD, testCoordinator, type TestCoordinator } from './testing.ts'

describe('coordinator HTTP API: users, sessions and errors', () => {
  let t: TestCoordinator
  let token: string

  beforeAll(async () => {
    t = await testCoordinator()
  })

  afterAll(async () => {
    // Whatever a test provoked, no answer may carry a stack trace.
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should answer healthz and buildinfo without a session', async () => {
    const health = await t.call('GET', '/healthz')
    expect(health.status).toBe(200)
    expect(health.text).toBe('ok')
    const info = await t.call('GET', '/api/v1/buildinfo')
    expect(info.json).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) })
  })

  it('should create the first user, log in and answer me', async () => {
    expect((await t.call('GET', '/api/v1/users/first')).json).toEqual({ hasFirstUser: false })

    const created = await t.call('POST', '/api/v1/users/first', {
      body: { username: 'alice', email: 'Alice@Example.com', password: PASSWORD },
    })
    expect(created.status).toBe(201)
    expect(created.json).toMatchObject({
      username: 'alice',
      email: 'alice@example.com',
      roles: ['owner'],
    })
    expect(created.text).not.toContain('scrypt')
    expect((await t.call('GET', '/api/v1/users/first')).json).toEqual({ hasFirstUser: true })

    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'alice', password: PASSWORD },
    })
    expect(login.status).toBe(200)
    token = login.json.sessionToken
    expect(token).toMatch(/^cms_[A-Za-z0-9_-]{43}$/)

    const me = await t.call('GET', '/api/v1/users/me', { token })
    expect(me.status).toBe(200)
    expect(me.json).toEqual(created.json)
  })

  it('should refuse a second first user with 409 MESH_FIRST_USER_EXISTS', async () => {
    const again = await t.call('POST', '/api/v1/users/first', {
      body: { username: 'mallory', email: 'm@example.com', password: PASSWORD },
    })
    expect(again.status).toBe(409)
    expect(again.json.code).toBe('MESH_FIRST_USER_EXISTS')
  })

  it('should accept the email in the username field', async () => {
    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'ALICE@example.com', password: PASSWORD },
    })
    expect(login.status).toBe(200)
  })

  it('should answer a wrong password and an unknown user alike with 401 MESH_BAD_CREDENTIALS', async () => {
    const wrong = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'alice', password: 'not the password' },
    })
    const unknown = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'nobody', password: 'not the password' },
    })
    expect(wrong.status).toBe(401)
    expect(wrong.json.code).toBe('MESH_BAD_CREDENTIALS')
    expect(unknown.json).toEqual(wrong.json)
  })

  it.each([
    ['no Authorization header', undefined],
    ['a garbage token', 'Bearer garbage'],
    ['an unknown session token', 'Bearer cms_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'],
    ['a Basic header', 'Basic YWxpY2U6cGFzc3dvcmQ='],
  ])('should answer 401 MESH_UNAUTHENTICATED for %s', async (_name, header) => {
    const headers: Record<string, string> = header === undefined ? {} : { authorization: header }
    const res = await t.call('GET', '/api/v1/users/me', { headers })
    expect(res.status).toBe(401)
    expect(res.json.code).toBe('MESH_UNAUTHENTICATED')
  })

  it('should end a session at logout', async () => {
    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'alice', password: PASSWORD },
    })
    const session = login.json.sessionToken as string
    expect((await t.call('POST', '/api/v1/users/logout', { token: session })).status).toBe(204)
    expect((await t.call('GET', '/api/v1/users/me', { token: session })).status).toBe(401)
    expect((await t.call('GET', '/api/v1/users/me', { token })).status).toBe(200)
  })

  it('should reject an expired session', async () => {
    const login = await t.call('POST', '/api/v1/users/login', {
      body: { username: 'alice', password: PASSWORD },
    })
    const { createHash } = await import('node:crypto')
    const key = createHash('sha256').update(login.json.sessionToken).digest('hex')
    const session = (await t.coordinator.store.sessions.get(key))!
    await t.coordinator.store.sessions.put(key, { ...session, expiresAt: Date.now() - 1 })

    const res = await t.call('GET', '/api/v1/users/me', { token: login.json.sessionToken })
    expect(res.status).toBe(401)
    expect(res.json.code).toBe('MESH_UNAUTHENTICATED')
    expect(await t.coordinator.store.sessions.get(key)).toBeUndefined()
  })

  it('should answer malformed JSON with 400 MESH_BAD_REQUEST', async () => {
    const res = await t.call('POST', '/api/v1/users/login', { body: '{"username": "alice",' })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_BAD_REQUEST')
  })

  it('should answer a body that is not JSON with 415', async () => {
    const res = await t.call('POST', '/api/v1/users/login', {
      body: 'username=alice',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    })
    expect(res.status).toBe(415)
    expect(res.json.code).toBe('MESH_UNSUPPORTED_MEDIA_TYPE')
  })

  it('should answer a body that fails its schema with 400 MESH_VALIDATION and the fields', async () => {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 42, extra: true },
    })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_VALIDATION')
    const fields = (res.json.validations as { field: string }[]).map((v) => v.field)
    expect(fields).toContain('template')
  })

  it('should answer unknown routes with 404 MESH_NOT_FOUND', async () => {
    for (const path of ['/nope', '/api/v1/nope', '/api/v1/users/me/extra']) {
      const res = await t.call('GET', path, { token })
      expect(res.status).toBe(404)
      expect(res.json.code).toBe('MESH_NOT_FOUND')
    }
  })

  it('should answer an unknown workspace with 404 MESH_WORKSPACE_NOT_FOUND', async () => {
    const res = await t.call('GET', '/api/v1/workspaces/nothing-here', { token })
    expect(res.status).toBe(404)
    expect(res.json.code).toBe('MESH_WORKSPACE_NOT_FOUND')
  })

  it('should answer bodies over 1 MiB with 413 MESH_BODY_TOO_LARGE', async () => {
    const body = JSON.stringify({ username: 'a'.repeat(1024 * 1024 + 10), password: 'x' })
    const res = await t.call('POST', '/api/v1/users/login', { body })
    expect(res.status).toBe(413)
    expect(res.json.code).toBe('MESH_BODY_TOO_LARGE')
  })

  it('should answer an internal failure with 500 MESH_INTERNAL and a generic message', async () => {
    const broken = createApp({
      ...t.coordinator,
      workspaces: {
        ...t.coordinator.workspaces,
        list: () => Promise.reject(new Error('secret internal detail')),
      },
    })
    const res = await broken.request('/api/v1/workspaces', {
      headers: { authorization: `Bearer ${token}` },
    })
    const text = await res.text()
    t.bodies.push(text)
    expect(res.status).toBe(500)
    const body = JSON.parse(text)
    expect(body.code).toBe('MESH_INTERNAL')
    expect(text).not.toContain('secret internal detail')
    expect(body.detail).toBe(`request id ${res.headers.get('x-request-id')}`)
  })
})
