/**
 * What users see when things go wrong: a template whose apply fails, and
 * bad input to the CLI and API. The server must keep serving throughout.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loginOwner, removeTree, startTestServer, type TestServer } from './harness.ts'

const FAILING = `
resource "terraform_data" "setup" {
  provisioner "local-exec" {
    command = "echo step-start; echo step-boom >&2; exit 3"
  }
}
`

const WORKING = `
resource "terraform_data" "ok" {
  provisioner "local-exec" {
    command = "echo all-good"
  }
}
`

describe('failures', () => {
  let server: TestServer
  let templates: string

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
    templates = join(dirname(server.dataDir), 'templates')
    await mkdir(join(templates, 'boom'), { recursive: true })
    await writeFile(join(templates, 'boom', 'main.tf'), FAILING)
  })

  afterAll(async () => {
    if (server === undefined) return
    await server.stop()
    await removeTree(dirname(server.dataDir))
  })

  it('should fail a build whose apply fails and show terraform its error', async () => {
    const push = await server.cli(['templates', 'push', 'boom', '-d', join(templates, 'boom')])
    expect(push.exitCode, push.stderr).toBe(0)

    const r = await server.cli(['create', 'b1', '--template', 'boom', '-y'])
    expect(r.exitCode).not.toBe(0)
    const output = r.stdout + r.stderr
    expect(output).toMatch(/step-start/)
    expect(output).toMatch(/step-boom/)
    expect(output).toMatch(/exit\s+status 3/)

    const show = await server.cli(['show', 'b1', '-o', 'json'])
    expect(JSON.parse(show.stdout)).toMatchObject({ status: 'failed' })
  })

  it('should keep serving and succeed on the next build', async () => {
    await writeFile(join(templates, 'boom', 'main.tf'), WORKING)
    const push = await server.cli(['templates', 'push', 'boom', '-d', join(templates, 'boom')])
    expect(push.stdout).toMatch(/version 2/)

    const r = await server.cli(['create', 'b2', '--template', 'boom', '-y'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/all-good/)

    // The failed workspace can still be deleted.
    const del = await server.cli(['delete', 'b1', '-y'])
    expect(del.exitCode, del.stderr).toBe(0)
  })

  it.each([
    ['an unknown workspace', ['show', 'nosuch'], /MESH_WORKSPACE_NOT_FOUND/],
    [
      'a name that is not a DNS label',
      ['create', 'Bad_Name', '--template', 'boom', '-y'],
      /MESH_INVALID_NAME/,
    ],
    [
      'an unknown template',
      ['create', 'x1', '--template', 'nosuch', '-y'],
      /MESH_TEMPLATE_NOT_FOUND/,
    ],
  ])('should print one line and exit non-zero for %s', async (_what, args, code) => {
    const r = await server.cli(args)
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(code)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).not.toMatch(/\n\s+at /)
  })

  it('should refuse a wrong password and a wrong token in one line', async () => {
    const wrong = await server.cli([
      'login',
      server.url,
      '--username',
      'admin',
      '--password',
      'nope-nope-nope',
    ])
    expect(wrong.exitCode).not.toBe(0)
    expect(wrong.stderr).toMatch(/MESH_BAD_CREDENTIALS/)

    const bad = await fetch(`${server.url}/api/v1/workspaces`, {
      headers: { authorization: 'Bearer cms_not-a-real-token' },
    })
    expect(bad.status).toBe(401)
    expect(await bad.json()).toMatchObject({ code: 'MESH_UNAUTHENTICATED' })
  })

  it('should answer malformed JSON with a stable code and no stack trace', async () => {
    const res = await fetch(`${server.url}/api/v1/users/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"username": ',
    })
    expect(res.status).toBe(400)
    const text = await res.text()
    expect(JSON.parse(text)).toMatchObject({ code: 'MESH_BAD_REQUEST' })
    expect(text).not.toMatch(/\s+at /)

    const health = await fetch(`${server.url}/healthz`)
    expect(health.status).toBe(200)
  })
})
