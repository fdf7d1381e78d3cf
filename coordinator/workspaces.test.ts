import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { BuildLogEvent } from '../sdk/api-types.ts'
import { CODER_MESH_BIN } from './coordinator.ts'
import { hashToken, newSessionToken } from './secrets.ts'
import {
  FAILING_TEMPLATES,
  openProbe,
  templateBody,
  testCoordinator,
  waitForBuild,
  type Probe,
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

// Builds run the real terraform: the `local` template is the probe (see
// testing.ts), which records what each build received and can hold a build
// at a gate; the others fail at one step each.
describe('workspaces and builds', () => {
  let t: TestCoordinator
  let probe: Probe
  let token: string

  beforeAll(async () => {
    probe = await openProbe()
    t = await testCoordinator()
    token = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: probe.template })
    for (const [name, text] of Object.entries(FAILING_TEMPLATES)) {
      const res = await t.call('POST', `/api/v1/templates/fails-${name}/versions`, {
        token,
        body: templateBody(text),
      })
      expect(res.status).toBe(201)
    }
  })

  afterAll(async () => {
    for (const body of t.bodies) expect(body).not.toContain('    at ')
    await t.cleanup()
    await probe.cleanup()
  })

  async function create(name: string, template = 'local') {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name, template },
    })
    expect(res.status).toBe(201)
    return { ...res.json, build: await waitForBuild(t, token, res.json.build.id) }
  }

  async function deleteBuild(name: string) {
    const res = await t.call('POST', `/api/v1/workspaces/${name}/builds`, {
      token,
      body: { transition: 'delete' },
    })
    expect(res.status).toBe(201)
    return waitForBuild(t, token, res.json.id)
  }

  async function logOf(buildId: string): Promise<string> {
    return (await t.call('GET', `/api/v1/builds/${buildId}/logs`, { token })).text
  }

  /** The builds recorded so far, queued ones included. */
  async function buildCount(): Promise<number> {
    const ids: string[] = []
    for await (const [id] of t.coordinator.store.builds.entries()) ids.push(id)
    return ids.length
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

    // What terraform received, as the probe template recorded it.
    const id = res.json.workspace.id
    const variables = await probe.variables('dev')
    expect(variables).toMatchObject({
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
    const agentToken = await probe.agentToken('dev')
    expect(agentToken).toMatch(/^cma_/)
    expect(variables.coder_mesh_agent_token).toBe(agentToken)
    // The token is sensitive: terraform hides it and the provisioner redacts it.
    expect(await logOf(build.id)).not.toContain(agentToken)
    expect(await probe.workdir('dev')).toBe(join(t.coordinator.dataDir, 'builds', build.id))

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
      const before = await buildCount()
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
      expect(await buildCount()).toBe(before)
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
    expect((await waitForBuild(t, token, res.json.build.id)).status).toBe('succeeded')
    expect(await probe.variables('limits')).toMatchObject(parameters)
  })

  it('should remove a workspace whose delete fails when its state records no resources', async () => {
    // terraform init fails on the template: the start creates nothing, and
    // every delete fails too.
    const created = await create('hopeless', 'fails-init')
    expect(created.build).toMatchObject({
      status: 'failed',
      error: 'terraform init: exit status 1',
    })
    const localDir = join(t.coordinator.dataDir, 'workspaces', created.workspace.id)
    expect(existsSync(localDir)).toBe(true)

    const build = await deleteBuild('hopeless')
    expect(build.status).toBe('succeeded')
    const log = await logOf(build.id)
    expect(log).toContain(
      "the delete failed (terraform init: exit status 1), but the workspace's Terraform state records no resources",
    )
    expect(log).toContain(`workspace folder removed: ${localDir}`)
    expect((await t.call('GET', '/api/v1/workspaces/hopeless', { token })).status).toBe(404)
    expect(existsSync(localDir)).toBe(false)
  })

  it('should keep a workspace whose delete fails while its state records resources', async () => {
    // The template's destroy-time local-exec exits 1.
    const created = await create('precious', 'fails-destroy')
    expect(created.build.status).toBe('succeeded')
    const id = created.workspace.id as string
    const stateOf = async () =>
      Buffer.from((await t.coordinator.store.states.get(id))!, 'base64').toString()
    expect(await stateOf()).toContain('"terraform_data"')

    const build = await deleteBuild('precious')
    expect(build).toMatchObject({ status: 'failed', error: 'terraform destroy: exit status 1' })
    expect(await logOf(build.id)).toContain('this destroy fails on purpose')
    const ws = await t.call('GET', '/api/v1/workspaces/precious', { token })
    expect(ws.json.status).toBe('failed')
    expect(JSON.parse(await stateOf()).resources).toMatchObject([
      { mode: 'managed', type: 'terraform_data', name: 'stuck' },
    ])
    expect(existsSync(join(t.coordinator.dataDir, 'workspaces', id))).toBe(true)
  })

  it('should pass the previous state to the next build and stop the workspace', async () => {
    const res = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'stop' },
    })
    expect(res.status).toBe(201)
    expect(res.json).toMatchObject({ number: 2, transition: 'stop', status: 'queued' })
    expect((await waitForBuild(t, token, res.json.id)).status).toBe('succeeded')

    // Terraform replaces the probe the start created: it had the start's state.
    expect(await logOf(res.json.id)).toContain('terraform_data.probe: Destruction complete')
    expect(await probe.variables('dev')).toMatchObject({
      coder_mesh_transition: 'stop',
      coder_mesh_start_count: '0',
      coder_mesh_agent_token: '',
    })
    expect(await probe.agentToken('dev')).toBe('')
    const ws = await t.call('GET', '/api/v1/workspaces/dev', { token })
    expect(ws.json.status).toBe('stopped')
  })

  it('should refuse a build while one is in progress with 409 MESH_BUILD_IN_PROGRESS', async () => {
    await probe.hold('dev')
    const started = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'start' },
    })
    expect((await t.call('GET', '/api/v1/workspaces/dev', { token })).json.status).toBe('starting')
    await probe.held('dev')

    const again = await t.call('POST', '/api/v1/workspaces/dev/builds', {
      token,
      body: { transition: 'stop' },
    })
    expect(again.status).toBe(409)
    expect(again.json.code).toBe('MESH_BUILD_IN_PROGRESS')
    await probe.release('dev')
    expect((await waitForBuild(t, token, started.json.id)).status).toBe('succeeded')
  })

  it('should stream build logs as NDJSON, following live lines to the final build', async () => {
    await probe.hold('logs')
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'logs', template: 'local' },
    })
    const id = res.json.build.id
    await probe.held('logs')

    // Followed from while the build waits at the gate to its end.
    const follow = t.app.request(`/api/v1/builds/${id}/logs?follow=true`, {
      headers: { authorization: `Bearer ${token}` },
    })
    setTimeout(() => void probe.release('logs'), 200)
    const response = await follow
    expect(response.headers.get('content-type')).toBe('application/x-ndjson')
    const events = ndjson(await response.text())

    const texts = events.flatMap((e) => (e.type === 'log' ? [e.text] : []))
    expect(texts[0]).toMatch(/^start logs/)
    const held = texts.indexOf('terraform_data.probe (local-exec): held at the gate')
    const through = texts.indexOf('terraform_data.probe (local-exec): through the gate')
    expect(held).toBeGreaterThan(0)
    expect(through).toBeGreaterThan(held)
    expect(texts.at(-1)).toBe('exit status 0')
    const seqs = events.flatMap((e) => (e.type === 'log' ? [e.seq] : []))
    expect(seqs).toEqual(seqs.map((_, i) => i + 1))
    expect(events.at(-1)).toMatchObject({ type: 'build', build: { id, status: 'succeeded' } })

    const stored = await t.call('GET', `/api/v1/builds/${id}/logs`, { token })
    expect(ndjson(stored.text)).toEqual(events)
  })

  it('should record a failed build with its error; a failed workspace can still be deleted', async () => {
    const { build } = await create('broken', 'fails-apply')
    expect(build).toMatchObject({ status: 'failed', error: 'terraform apply: exit status 1' })
    expect(await logOf(build.id)).toContain('this apply fails on purpose')
    expect((await t.call('GET', '/api/v1/workspaces/broken', { token })).json.status).toBe('failed')

    // Terraform destroys the resource its failed apply left tainted.
    const del = await deleteBuild('broken')
    expect(del.status).toBe('succeeded')
    const gone = await t.call('GET', '/api/v1/workspaces/broken', { token })
    expect(gone.status).toBe(404)
    expect(gone.json.code).toBe('MESH_WORKSPACE_NOT_FOUND')
    // The build and its log outlive the workspace.
    expect((await t.call('GET', `/api/v1/builds/${del.id}`, { token })).status).toBe(200)

    await create('broken')
    expect((await t.call('GET', '/api/v1/workspaces/broken', { token })).json.status).toBe(
      'running',
    )
  })

  it('should fail a build whose provisioner throws, with its message', async () => {
    // The provisioner throws for a job it cannot run: here a parameter the
    // API refuses now, kept by a workspace created before it was checked.
    const { workspace } = await create('throws')
    const record = (await t.coordinator.store.workspaces.get(workspace.id))!
    await t.coordinator.store.workspaces.put(workspace.id, {
      ...record,
      parameters: { greeting: 'a\0b' },
    })
    const res = await t.call('POST', '/api/v1/workspaces/throws/builds', {
      token,
      body: { transition: 'stop' },
    })
    const build = await waitForBuild(t, token, res.json.id)
    expect(build).toMatchObject({
      status: 'failed',
      error: 'Variable greeting contains a NUL byte.',
    })
    expect(await logOf(build.id)).toContain('build failed: Variable greeting contains a NUL byte.')
  })

  it('should run at most two builds at once across workspaces', async () => {
    const names = ['para-1', 'para-2', 'para-3']
    const ids: string[] = []
    for (const name of names) {
      await probe.hold(name)
      const res = await t.call('POST', '/api/v1/workspaces', {
        token,
        body: { name, template: 'local' },
      })
      ids.push(res.json.build.id)
    }
    await Promise.all(names.slice(0, 2).map((name) => probe.held(name)))
    await new Promise((r) => setTimeout(r, 200))
    const third = await t.call('GET', `/api/v1/builds/${ids[2]}`, { token })
    expect(third.json.status).toBe('queued')
    expect(probe.isHeld('para-3')).toBe(false)

    // The third runs once one of the first two is done, while the other still runs.
    await probe.release('para-1')
    expect((await waitForBuild(t, token, ids[0]!)).status).toBe('succeeded')
    await probe.held('para-3')
    expect(probe.isHeld('para-2')).toBe(true)
    await Promise.all(names.slice(1).map((name) => probe.release(name)))
    for (const id of ids) expect((await waitForBuild(t, token, id)).status).toBe('succeeded')
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

  it("should page workspaces by name, and everyone's by owner then name", async () => {
    // Clones of one real workspace, written straight into the store, in an
    // order that is neither their names' nor their ids'.
    const store = t.coordinator.store
    const seed = await create('paging-seed')
    const original = await store.workspaces.get(seed.workspace.id)
    if (original === undefined) throw new Error('the seed workspace is not stored')
    await t.user(token, 'pager')
    const pagerId = await store.usernames.get('pager')
    if (pagerId === undefined) throw new Error('pager has no id')
    const clones = [
      ...['paging-c', 'paging-a', 'paging-d', 'paging-b'].map(
        (name) => [original.ownerId, name] as const,
      ),
      ...['pz', 'pa'].map((name) => [pagerId, name] as const),
    ]
    const batch = store.batch()
    for (const [ownerId, name] of clones) {
      const id = randomUUID()
      batch.put(store.workspaces, id, { ...original, id, ownerId, name })
      batch.put(store.workspaceNames, `${ownerId}/${name}`, id)
    }
    await batch.write()

    async function everyPage(query: string, limit: number): Promise<string[]> {
      const out: string[] = []
      let offset: string | null = '0'
      while (offset !== null) {
        const path = `/api/v1/workspaces?${query}limit=${limit}&offset=${offset}`
        const res = await t.call('GET', path, { token })
        expect(res.status).toBe(200)
        expect(res.json.length).toBeLessThanOrEqual(limit)
        for (const w of res.json) out.push(`${w.owner}/${w.name}`)
        offset = res.headers.get('x-next-offset')
        if (offset !== null) expect(Number(offset)).toBe(out.length)
      }
      return out
    }

    const mine = await everyPage('', 2)
    expect(mine).toEqual([...mine].sort())
    expect(mine.filter((w) => w.startsWith('alice/paging-'))).toEqual([
      'alice/paging-a',
      'alice/paging-b',
      'alice/paging-c',
      'alice/paging-d',
      'alice/paging-seed',
    ])
    expect(mine.some((w) => w.startsWith('pager/'))).toBe(false)
    expect(await everyPage('', 1000)).toEqual(mine)

    const all = await everyPage('all=true&', 3)
    expect(all).toEqual([...mine, 'pager/pa', 'pager/pz'])
    const past = await t.call('GET', `/api/v1/workspaces?all=true&offset=${all.length}`, { token })
    expect(past.json).toEqual([])
    expect(past.headers.get('x-next-offset')).toBeNull()

    const both = await t.call('GET', '/api/v1/workspaces?all=true&owner=pager', { token })
    expect(both.status).toBe(400)
    expect(both.json.code).toBe('MESH_VALIDATION')
    expect(both.json.message).toMatch(/owner= or all=true, not both/)
  })

  it('should never both create a workspace and delete its owner', async () => {
    // A workspace created while its owner is deleted would run with no owner
    // to reach it: one of the two must be refused, whichever order they run in.
    for (let i = 0; i < 12; i++) {
      const member = await t.user(token, `racer${i}`)
      const [created, deleted] = await Promise.all([
        t.call('POST', '/api/v1/workspaces', {
          token: member,
          body: { name: 'r', template: 'fails-init' },
        }),
        t.call('DELETE', `/api/v1/users/racer${i}`, { token }),
      ])
      expect([created.status, deleted.status]).not.toEqual([201, 204])
      if (created.status === 201) expect(deleted.json.code).toBe('MESH_USER_HAS_WORKSPACES')
      if (deleted.status === 204) expect([401, 404]).toContain(created.status)
    }
  })

  it('should keep tokens in the store only as hashes', async () => {
    const agentToken = await probe.agentToken('dev')
    const needles = [token, agentToken].map((s) => Buffer.from(s))
    await t.close()
    for (const file of await filesUnder(t.dataDir)) {
      const bytes = await readFile(file)
      for (const needle of needles) expect(bytes.includes(needle), file).toBe(false)
    }
    expect(needles.map((n) => n.length)).toEqual([47, 47])
  })
})
