import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { templatePathProblem } from './templates.ts'
import { quoteText, UNSAFE_TEXT } from './text.ts'
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
    ['main\n.tf', 'must not contain control characters (U+000A)'],
    ['evil\u202efn.tf', 'must not contain control characters (U+202E)'],
    ['a\u001b[31m.tf', 'must not contain control characters (U+001B)'],
    ['next\u0085line.tf', 'must not contain control characters (U+0085)'],
    ['iso\u2066late.tf', 'must not contain control characters (U+2066)'],
    ['half\ud800.tf', 'must not contain control characters (U+D800)'],
    ['terraform.tfstate', 'is Terraform state, which the workspace keeps, not the template'],
    ['terraform.tfstate.backup', 'is Terraform state, which the workspace keeps, not the template'],
    ['errored.tfstate', 'is Terraform state, which the workspace keeps, not the template'],
    ['.terraform/providers/p', "is inside Terraform's data folder .terraform"],
    ['.coder-mesh/terraform.json', "is inside .coder-mesh, the provisioner's own folder"],
    [`${'n'.repeat(256)}.tf`, 'must not hold a name over 255 bytes'],
  ])('should refuse the file path %j, naming it', async (path, problem) => {
    expect(templatePathProblem(path)).toBe(problem)
    const res = await t.call('POST', '/api/v1/templates/local/versions', {
      token,
      body: { files: [...templateBody().files, { path, content: b64('x') }] },
    })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_VALIDATION')
    expect(res.json.validations).toEqual([
      { field: 'files.1.path', detail: `${quoteText(path)} ${problem}` },
    ])
    expect(res.json.message).toContain(quoteText(path))
    // Nothing unsafe comes back to a terminal, escaped or not.
    expect(res.text).not.toMatch(UNSAFE_TEXT)
  })

  it('should accept files that merely look like reserved ones, deeper down', async () => {
    const files = [
      ...templateBody().files,
      { path: 'modules/x/terraform.tfstate', content: b64('{}') },
      { path: 'docs/.terraform/readme', content: b64('x') },
      { path: '.terraform.lock.hcl', content: b64('# lock') },
    ]
    const res = await t.call('POST', '/api/v1/templates/lookalike/versions', {
      token,
      body: { files },
    })
    expect(res.status).toBe(201)
  })

  it('should refuse a file that is also the folder of another, naming both', async () => {
    for (const files of [
      ['main.tf', 'x', 'x/y.tf'],
      ['main.tf', 'x/y.tf', 'x'],
      ['main.tf', 'a/b', 'a/b/c/d.tf'],
    ]) {
      const res = await t.call('POST', '/api/v1/templates/clash/versions', {
        token,
        body: { files: files.map((path) => ({ path, content: b64('x') })) },
      })
      expect(res.status).toBe(400)
      expect(res.json.code).toBe('MESH_VALIDATION')
      const [file, inside] = files[1]!.length < files[2]!.length ? [1, 2] : [2, 1]
      expect(res.json.validations).toEqual([
        {
          field: `files.${file}.path`,
          detail: `"${files[file]}" is a file, but "${files[inside]}" (files.${inside}.path) needs it to be a folder`,
        },
      ])
    }
    expect((await t.call('GET', '/api/v1/templates/clash/versions', { token })).status).toBe(404)
  })

  it.each([
    [['README.md']],
    [['modules/vm/main.tf', 'scripts/start.sh']],
    [['.hidden.tf', 'main.tf~', '#main.tf#', 'main.tftest.hcl', 'main.tf.bak']],
  ])('should refuse a version without a top-level Terraform file: %j', async (paths) => {
    const res = await t.call('POST', '/api/v1/templates/empty/versions', {
      token,
      body: { files: paths.map((path) => ({ path, content: b64('x') })) },
    })
    expect(res.status).toBe(400)
    expect(res.json.code).toBe('MESH_VALIDATION')
    expect(res.json.validations).toEqual([
      {
        field: 'files',
        detail:
          'the template needs at least one Terraform file (*.tf or *.tf.json) at the top level',
      },
    ])
  })

  it('should accept a version whose only Terraform file is main.tf.json', async () => {
    const res = await t.call('POST', '/api/v1/templates/json/versions', {
      token,
      body: { files: [{ path: 'main.tf.json', content: b64('{}') }] },
    })
    expect(res.status).toBe(201)
  })

  it.each(['\u001b]0;pwned\u0007', 'two\nlines', 'tab\there', 'bidi \u202e txt', '\u009b31m'])(
    'should refuse the message %j',
    async (message) => {
      const res = await t.call('POST', '/api/v1/templates/msg/versions', {
        token,
        body: { ...templateBody(), message },
      })
      expect(res.status).toBe(400)
      expect(res.json.code).toBe('MESH_VALIDATION')
      expect(res.json.validations).toEqual([
        {
          field: 'message',
          detail: expect.stringMatching(
            /^the message must be one line without control characters \(found U\+[0-9A-F]{4}\)$/,
          ),
        },
      ])
      expect(res.text).not.toMatch(UNSAFE_TEXT)
    },
  )

  it('should escape control characters a message stored before they were refused holds', async () => {
    const pushed = await t.call('POST', '/api/v1/templates/old/versions', {
      token,
      body: { ...templateBody(), message: 'fine, ünïcødé 名前' },
    })
    expect(pushed.json.message).toBe('fine, ünïcødé 名前')
    const key = 'old/00000001'
    const record = (await t.coordinator.store.templateVersions.get(key))!
    await t.coordinator.store.templateVersions.put(key, {
      ...record,
      message: 'red \u001b[31malert\u202e',
      files: ['ma\nin.tf'],
    })

    const versions = await t.call('GET', '/api/v1/templates/old/versions', { token })
    expect(versions.json[0]).toMatchObject({
      message: 'red \\u001b[31malert\\u202e',
      files: ['ma\\nin.tf'],
    })
    expect(versions.text).not.toMatch(UNSAFE_TEXT)
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
      { field: 'files.0.content', detail: '"main.tf" must be base64' },
      { field: 'files.1.path', detail: '"main.tf" is a duplicate' },
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
      body: { files: [...templateBody().files, { path: 'blob.bin', content }] },
    })
    expect(res.status).toBe(201)
  })
})
