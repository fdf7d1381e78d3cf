import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { templatePathProblem } from './templates.ts'
import { templateBody, testCoordinator, type TestCoordinator } from './testing.ts'

const b64 = (text: string) => Buffer.from(text).toString('base64')

describe('templates', () => {
  let t: TestCoordinator
  let token: string

  beforeAll(async () => {
    t = await testCoordinator()
    token = await t.owner()
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  it('should store pushed versions numbered one past the last and make the newest active', async () => {
    const first = await t.call('POST', '/api/v1/templates/local/versions', {
      token,
      body: { ...templateBody(), message: 'first' },
    })
    expect(first.status).toBe(201)
    expect(first.json).toMatchObject({
      template: 'local',
      version: 1,
      message: 'first',
      files: ['main.tf'],
      createdBy: 'alice',
    })

    const files = [
      { path: 'main.tf', content: b64('# two') },
      { path: 'scripts/start.sh', content: b64('echo hi') },
    ]
    const second = await t.call('POST', '/api/v1/templates/local/versions', {
      token,
      body: { files },
    })
    expect(second.json).toMatchObject({
      version: 2,
      message: '',
      files: ['main.tf', 'scripts/start.sh'],
    })

    const list = await t.call('GET', '/api/v1/templates', { token })
    expect(list.json).toEqual([
      expect.objectContaining({ name: 'local', activeVersion: 2, versions: 2 }),
    ])
    const versions = await t.call('GET', '/api/v1/templates/local/versions', { token })
    expect(versions.json.map((v: { version: number }) => v.version)).toEqual([1, 2])

    const stored = await t.coordinator.templates.files('local', 2)
    expect(stored.find((f) => f.path === 'scripts/start.sh')?.content.toString()).toBe('echo hi')
  })

  it('should answer versions of an unknown template with 404 MESH_TEMPLATE_NOT_FOUND', async () => {
    const res = await t.call('GET', '/api/v1/templates/missing/versions', { token })
    expect(res.status).toBe(404)
    expect(res.json.code).toBe('MESH_TEMPLATE_NOT_FOUND')
  })

  it('should refuse an invalid template name with 400 MESH_INVALID_NAME', async () => {
    const res = await t.call('POST', '/api/v1/templates/Bad_Name/versions', {
      token,
      body: templateBody(),
    })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_INVALID_NAME')
  })

  it.each([
    ['/etc/passwd', 'must be a relative path'],
    ['../escape.tf', 'must not contain ".."'],
    ['a/../../b.tf', 'must not contain ".."'],
    ['a\\b.tf', 'must use "/" between folders'],
    ['a//b.tf', 'must not hold empty or "." parts'],
    ['C:/x.tf', 'must be a relative path'],
  ])('should refuse the file path %j', async (path, problem) => {
    expect(templatePathProblem(path)).toBe(problem)
    const res = await t.call('POST', '/api/v1/templates/local/versions', {
      token,
      body: { files: [{ path, content: b64('x') }] },
    })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_VALIDATION')
    expect(res.json.validations).toEqual([{ field: 'files.0.path', detail: problem }])
  })

  it('should refuse content that is not base64 and duplicate paths', async () => {
    const res = await t.call('POST', '/api/v1/templates/local/versions', {
      token,
      body: {
        files: [
          { path: 'main.tf', content: 'not base64!' },
          { path: 'main.tf', content: b64('x') },
        ],
      },
    })
    expect(res.status).toBe(400)
    expect(res.json.validations).toEqual([
      { field: 'files.0.content', detail: 'must be base64' },
      { field: 'files.1.path', detail: 'is a duplicate' },
    ])
  })

  it('should refuse files totalling over 10 MiB with 413 MESH_BODY_TOO_LARGE', async () => {
    const chunk = Buffer.alloc(6 * 1024 * 1024, 'a').toString('base64')
    const res = await t.call('POST', '/api/v1/templates/big/versions', {
      token,
      body: {
        files: [
          { path: 'a.tf', content: chunk },
          { path: 'b.tf', content: chunk },
        ],
      },
    })
    expect(res.status).toBe(413)
    expect(res.json.code).toBe('MESH_BODY_TOO_LARGE')
    expect((await t.call('GET', '/api/v1/templates/big/versions', { token })).status).toBe(404)
  })

  it('should accept a template push above 1 MiB', async () => {
    const content = Buffer.alloc(2 * 1024 * 1024, 'b').toString('base64')
    const res = await t.call('POST', '/api/v1/templates/medium/versions', {
      token,
      body: { files: [{ path: 'blob.bin', content }] },
    })
    expect(res.status).toBe(201)
  })
})
