import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import type { BuildLogEvent } from '../sdk/api-types.ts'
import { CODER_MESH_BIN } from './coordinator.ts'
import { hashToken, newSessionToken } from './secrets.ts'
import {
  deferred,
  stubProvision,
  templateBody,
  testCoordinator,
  waitForBuild,
  type StubProvision,
  type TestCoordinator,
} from './testing.ts'

function ndjson(text: string): BuildLogEvent[] {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as BuildLogEvent)
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name))
  }
  return out
}

describe('workspaces and builds', () => {
  let t: TestCoordinator
  let stub: StubProvision
  let token: string

  beforeAll(async () => {
    stub = stubProvision()
    t = await testCoordinator({ provision: stub.provision })
    token = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: templateBody() })
  })

  beforeEach(() => {
    stub.behave = stubProvision().behave
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
  })

  async function create(name: string, parameters?: Record<string, string>) {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name, template: 'local', parameters },
    })
    expect(res.status).toBe(201)
    await waitForBuild(t, token, res.json.build.id)
    return res.json
  }

  it.each(['-dev', 'dev-', 'Dev', 'dev_1', 'a'.repeat(33), 'dev--1', ''])(
    'should refuse the workspace name %j with 400 MESH_INVALID_NAME',
    async (name) => {
      const res = await t.call('POST', '/api/v1/workspaces', {
        token,
        body: { name, template: 'local' },
      })
      expect(res.status).toBe(400)
      expect(res.json.code).toBe('MESH_INVALID_NAME')
    },
  )

  it('should create a workspace whose first build starts it', async () => {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local', parameters: { cpu: '2' } },
    })
    expect(res.status).toBe(201)
    expect(res.json.workspace).toMatchObject({ name: 'dev', owner: 'alice', template: 'local' })
    expect(res.json.build).toMatchObject({ number: 1, transition: 'start', templateVersion: 1 })

    const build = await waitForBuild(t, token, res.json.build.id)
    expect(build.status).toBe('succeeded')
    const ws = await t.call('GET', '/api/v1/workspaces/dev', { token })
    expect(ws.json).toMatchObject({ status: 'running', agent: null, latestBuild: { id: build.id } })

    const job = stub.jobs.at(-1)!
    const id = res.json.workspace.id
    expect(job.variables).toMatchObject({
      cpu: '2',
      coder_mesh_url: 'http://127.0.0.1:7080',
      coder_mesh_agent_command: `'${CODER_MESH_BIN}' agent`,
      coder_mesh_workspace_name: 'dev',
      coder_mesh_workspace_owner: 'alice',
      coder_mesh_workspace_id: id,
      coder_mesh_transition: 'start',
      coder_mesh_start_count: '1',
      coder_mesh_local_dir: join(t.coordinator.dataDir, 'workspaces', id),
    })
    expect(job.variables.coder_mesh_agent_token).toMatch(/^cma_/)
    expect(job.sensitive).toEqual(['coder_mesh_agent_token'])
    expect(job.workRoot).toBe(join(t.coordinator.dataDir, 'builds'))
    expect(job.files.map((f) => f.path)).toEqual(['main.tf'])
    expect(job.state).toBeUndefined()

    const list = await t.call('GET', '/api/v1/workspaces', { token })
    expect(list.json.map((w: { name: string }) => w.name)).toContain('dev')
  })

  it('should refuse a second workspace of the same name with 409 MESH_WORKSPACE_EXISTS', async () => {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    expect(res.status).toBe(409)
    expect(res.json.code).toBe('MESH_WORKSPACE_EXISTS')
  })

  it('should refuse an unknown template with 404 MESH_TEMPLATE_NOT_FOUND', async () => {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'other', template: 'nope' },
    })
    expect(res.status).toBe(404)
    expect(res.json.code).toBe('MESH_TEMPLATE_NOT_FOUND')
  })

  it('should refuse parameters that would override coder_mesh_ variables', async () => {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'sneaky', template: 'local', parameters: { coder_mesh_url: 'http://evil' } },
    })
    expect(res.status).toBe(400)
    expect(res.json.validations[0].field).toBe('parameters.coder_mesh_url')
  })

  it.each([
    [{ 'a b': 'x' }, 'parameters.a b', /is not a Terraform variable name/],
    [{ '1st': 'x' }, 'parameters.1st', /is not a Terraform variable name/],
    [{ '': 'x' }, 'parameters.', /is not a Terraform variable name/],
    [{ ['v'.repeat(129)]: 'x' }, `parameters.${'v'.repeat(129)}`, /at most 128/],
    [{ coder_mesh_x: 'x' }, 'parameters.coder_mesh_x', /is set by coder-mesh/],
    [{ greeting: 'a\0b' }, 'parameters.greeting', /must not contain a NUL byte/],
    [{ big: 'x'.repeat(16 * 1024 + 1) }, 'parameters.big', /16385 bytes long; at most 16384/],
    [{ big: 'é'.repeat(8 * 1024 + 1) }, 'parameters.big', /16386 bytes long; at most 16384/],
    [
      Object.fromEntries(['a', 'b', 'c', 'd', 'e'].map((n) => [n, 'x'.repeat(15 * 1024)])),
      'parameters',
      /total 76805 bytes; at most 65536/,
    ],
  ])(
    'should refuse parameters %# that no build could pass to Terraform',
    async (parameters, field, detail) => {
      const before = stub.jobs.length
      const res = await t.call('POST', '/api/v1/workspaces', {
        token,
        body: { name: 'params', template: 'local', parameters },
      })
      expect(res.status).toBe(400)
      expect(res.json.code).toBe('MESH_VALIDATION')
      expect(res.json.validations).toEqual([{ field, detail: expect.stringMatching(detail) }])
      expect(res.json.message).toMatch(detail)
      expect(res.text).not.toContain('\u0000')
      expect((await t.call('GET', '/api/v1/workspaces/params', { token })).status).toBe(404)
      expect(stub.jobs.length).toBe(before)
    },
  )

  it('should accept parameters at the limits', async () => {
    const parameters = {
      ...Object.fromEntries(['a', 'b', 'c'].map((n) => [n, 'x'.repeat(16 * 1024)])),
      'with-dash_1': 'ünïcødé\nnewlines are fine',
    }
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'limits', template: 'local', parameters },
    })
    expect(res.status).toBe(201)
    await waitForBuild(t, token, res.json.build.id)
    expect(stub.jobs.at(-1)!.variables).toMatchObject(parameters)
  })

  it('should remove a workspace whose delete fails when its state records no resources', async () => {
    // The start fails without creating anything, and so does every delete.
    stub.behave = async () => ({ ok: false, error: 'terraform init: exit status 1' })
    const created = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'hopeless', template: 'local' },
    })
    expect((await waitForBuild(t, token, created.json.build.id)).status).toBe('failed')
    const localDir = join(t.coordinator.dataDir, 'workspaces', created.json.workspace.id)
    expect(existsSync(localDir)).toBe(true)

    const del = await t.call('POST', '/api/v1/workspaces/hopeless/builds', {
      token,
      body: { transition: 'delete' },
    })
    const build = await waitForBuild(t, token, del.json.id)
    expect(build.status).toBe('succeeded')
    const logs = await t.call('GET', `/api/v1/builds/${del.json.id}/logs`, { token })
    expect(logs.text).toContain(
      "the delete failed (terraform init: exit status 1), but the workspace's Terraform state records no resources",
    )
    expect(logs.text).toContain(`workspace folder removed: ${localDir}`)
    expect((await t.call('GET', '/api/v1/workspaces/hopeless', { token })).status).toBe(404)
    expect(existsSync(localDir)).toBe(false)
  })

  it('should keep a workspace whose delete fails while its state records resources', async () => {
    const state = JSON.stringify({
      version: 4,
      serial: 3,
      lineage: 'l-1',
      resources: [{ mode: 'managed', type: 'terraform_data', name: 'vm', instances: [{}] }],
    })
    stub.behave = async () => ({ ok: true, state: Buffer.from(state) })
    await create('precious')
    stub.behave = async () => ({ ok: false, error: 'terraform destroy: exit status 1' })
    const del = await t.call('POST', '/api/v1/workspaces/precious/builds', {
      token,
      body: { transition: 'delete' },
    })
    const build = await waitForBuild(t, token, del.json.id)
    expect(build).toMatchObject({ status: 'failed', error: 'terraform destroy: exit status 1' })
    const ws = await t.call('GET', '/api/v1/workspaces/precious', { token })
    expect(ws.json.status).toBe('failed')
    const id = ws.json.id as string
    expect(await t.coordinator.store.states.get(id)).toBe(Buffer.from(state).toString('base64'))
    expect(existsSync(join(t.coordinator.dataDir, 'workspaces', id))).toBe(true)
  })

  it('should pass the previous state to the next build and stop the workspace', async () => {
    const res = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'stop' },
    })
    expect(res.status).toBe(201)
    expect(res.json).toMatchObject({ number: 2, transition: 'stop', status: 'queued' })
    await waitForBuild(t, token, res.json.id)

    const job = stub.jobs.at(-1)!
    expect(job.state?.toString()).toBe('state after start')
    expect(job.variables).toMatchObject({ coder_mesh_start_count: '0', coder_mesh_agent_token: '' })
    const ws = await t.call('GET', '/api/v1/workspaces/dev', { token })
    expect(ws.json.status).toBe('stopped')
  })

  it('should refuse a build while one is in progress with 409 MESH_BUILD_IN_PROGRESS', async () => {
    const gate = deferred()
    stub.behave = async () => {
      await gate.promise
      return { ok: true }
    }
    const started = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'start' },
    })
    expect((await t.call('GET', '/api/v1/workspaces/dev', { token })).json.status).toBe('starting')

    const again = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'stop' },
    })
    expect(again.status).toBe(409)
    expect(again.json.code).toBe('MESH_BUILD_IN_PROGRESS')
    gate.resolve()
    expect((await waitForBuild(t, token, started.json.id)).status).toBe('succeeded')
  })

  it('should stream build logs as NDJSON, following live lines to the final build', async () => {
    await create('logs')
    const gate = deferred()
    stub.behave = async (_job, options) => {
      options.onLog({ source: 'stdout', text: 'before the gate' })
      await gate.promise
      options.onLog({ source: 'stderr', text: 'after the gate' })
      return { ok: true }
    }
    const res = await t.call('POST', '/api/v1/workspaces/logs/builds', {
      token,
      body: { transition: 'start' },
    })
    const id = res.json.id

    const follow = t.app.request(`/api/v1/builds/${id}/logs?follow=true`, {
      headers: { authorization: `Bearer ${token}` },
    })
    setTimeout(() => gate.resolve(), 200)
    const response = await follow
    expect(response.headers.get('content-type')).toBe('application/x-ndjson')
    const events = ndjson(await response.text())

    const texts = events.flatMap((e) => (e.type === 'log' ? [e.text] : []))
    expect(texts).toEqual([
      expect.stringMatching(/^start logs/),
      'before the gate',
      'after the gate',
    ])
    const seqs = events.flatMap((e) => (e.type === 'log' ? [e.seq] : []))
    expect(seqs).toEqual([1, 2, 3])
    expect(events.at(-1)).toMatchObject({ type: 'build', build: { id, status: 'succeeded' } })

    const stored = await t.call('GET', `/api/v1/builds/${id}/logs`, { token })
    expect(ndjson(stored.text)).toEqual(events)
  })

  it('should record a failed build with its error; a failed workspace can still be deleted', async () => {
    stub.behave = async () => ({ ok: false, error: 'terraform apply: exit status 1' })
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'broken', template: 'local' },
    })
    const build = await waitForBuild(t, token, res.json.build.id)
    expect(build).toMatchObject({ status: 'failed', error: 'terraform apply: exit status 1' })
    expect((await t.call('GET', '/api/v1/workspaces/broken', { token })).json.status).toBe('failed')

    stub.behave = stubProvision().behave
    const del = await t.call('POST', '/api/v1/workspaces/broken/builds', {
      token,
      body: { transition: 'delete' },
    })
    expect((await waitForBuild(t, token, del.json.id)).status).toBe('succeeded')
    const gone = await t.call('GET', '/api/v1/workspaces/broken', { token })
    expect(gone.status).toBe(404)
    expect(gone.json.code).toBe('MESH_WORKSPACE_NOT_FOUND')
    // The build and its log outlive the workspace.
    expect((await t.call('GET', `/api/v1/builds/${del.json.id}`, { token })).status).toBe(200)

    await create('broken')
    expect((await t.call('GET', '/api/v1/workspaces/broken', { token })).json.status).toBe(
      'running',
    )
  })

  it('should fail a build whose provisioner throws, with its message', async () => {
    stub.behave = async () => {
      throw new Error('provisioner exploded')
    }
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'throws', template: 'local' },
    })
    const build = await waitForBuild(t, token, res.json.build.id)
    expect(build).toMatchObject({ status: 'failed', error: 'provisioner exploded' })
  })

  it('should run at most two builds at once across workspaces', async () => {
    const gate = deferred()
    let running = 0
    let peak = 0
    stub.behave = async () => {
      peak = Math.max(peak, ++running)
      await gate.promise
      running--
      return { ok: true }
    }
    const ids: string[] = []
    for (const name of ['para-1', 'para-2', 'para-3']) {
      const res = await t.call('POST', '/api/v1/workspaces', {
        token,
        body: { name, template: 'local' },
      })
      ids.push(res.json.build.id)
    }
    await new Promise((r) => setTimeout(r, 200))
    expect(running).toBe(2)
    const third = await t.call('GET', `/api/v1/builds/${ids[2]}`, { token })
    expect(third.json.status).toBe('queued')

    gate.resolve()
    for (const id of ids) expect((await waitForBuild(t, token, id)).status).toBe('succeeded')
    expect(peak).toBe(2)
  })

  it("should hide other users' workspaces and builds", async () => {
    const store = t.coordinator.store
    const bob = {
      id: randomUUID(),
      username: 'bob',
      email: 'bob@example.com',
      roles: ['member'],
      passwordHash: 'none',
      status: 'active' as const,
      createdAt: new Date().toISOString(),
    }
    await store.users.put(bob.id, bob)
    const bobToken = newSessionToken()
    await store.sessions.put(hashToken(bobToken), {
      userId: bob.id,
      createdAt: bob.createdAt,
      expiresAt: Date.now() + 60_000,
    })

    expect((await t.call('GET', '/api/v1/workspaces', { token: bobToken })).json).toEqual([])
    const ws = await t.call('GET', '/api/v1/workspaces/dev', { token: bobToken })
    expect(ws.json.code).toBe('MESH_WORKSPACE_NOT_FOUND')
    const aliceWs = await t.call('GET', '/api/v1/workspaces/dev', { token })
    const build = await t.call('GET', `/api/v1/builds/${aliceWs.json.latestBuild.id}/logs`, {
      token: bobToken,
    })
    expect(build.status).toBe(404)
    expect(build.json.code).toBe('MESH_BUILD_NOT_FOUND')
  })

  it('should keep tokens in the store only as hashes', async () => {
    const agentToken = stub.jobs.findLast((j) => j.variables.coder_mesh_agent_token !== '')!
      .variables.coder_mesh_agent_token!
    const needles = [token, agentToken].map((s) => Buffer.from(s))
    await t.close()
    for (const file of await filesUnder(t.dataDir)) {
      const bytes = await readFile(file)
      for (const needle of needles) expect(bytes.includes(needle), file).toBe(false)
    }
    expect(needles.map((n) => n.length)).toEqual([47, 47])
  })
})
