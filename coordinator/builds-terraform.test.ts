/**
 * Builds through the real provisioner and terraform, with a template of
 * built-in `terraform_data` resources whose local-exec only echoes.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { BuildLogEvent } from '../sdk/api-types.ts'
import { provision } from '../provisioner/index.ts'
import { testCoordinator, waitForBuild, type TestCoordinator } from './testing.ts'

const MAIN_TF = `
variable "coder_mesh_transition" { type = string }
variable "coder_mesh_start_count" { type = number }
variable "coder_mesh_agent_token" {
  type      = string
  sensitive = true
}
variable "greeting" {
  type    = string
  default = "hello"
  validation {
    condition     = length(var.greeting) < 20
    error_message = "The greeting must be shorter than 20 characters."
  }
}

resource "terraform_data" "workspace" {
  count = var.coder_mesh_start_count
  provisioner "local-exec" {
    command = "echo \${var.greeting} from \${var.coder_mesh_transition}"
  }
}

resource "terraform_data" "home" {
  provisioner "local-exec" {
    when    = destroy
    command = "echo removing the home folder"
  }
}
`

function logText(events: BuildLogEvent[]): string {
  return events.flatMap((e) => (e.type === 'log' ? [e.text] : [])).join('\n')
}

describe('builds with terraform', () => {
  let t: TestCoordinator
  let token: string
  const agentTokens: string[] = []

  beforeAll(async () => {
    t = await testCoordinator({
      provision: (job, options) => {
        agentTokens.push(job.variables.coder_mesh_agent_token ?? '')
        return provision(job, options)
      },
    })
    token = await t.owner()
    const content = Buffer.from(MAIN_TF).toString('base64')
    await t.call('POST', '/api/v1/templates/echo/versions', {
      token,
      body: { files: [{ path: 'main.tf', content }] },
    })
  })

  afterAll(async () => {
    await t?.cleanup()
  })

  async function logsOf(buildId: string): Promise<BuildLogEvent[]> {
    const res = await t.call('GET', `/api/v1/builds/${buildId}/logs`, { token })
    return res.text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as BuildLogEvent)
  }

  async function build(name: string, transition: 'start' | 'stop' | 'delete') {
    const res = await t.call('POST', `/api/v1/workspaces/${name}/builds`, {
      token,
      body: { transition },
    })
    expect(res.status).toBe(201)
    return waitForBuild(t, token, res.json.id)
  }

  it('should start, stop and delete a workspace, keeping state between builds', async () => {
    const created = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'echo', parameters: { greeting: 'howdy' } },
    })
    const started = await waitForBuild(t, token, created.json.build.id)
    expect(started.status).toBe('succeeded')
    const startLog = logText(await logsOf(started.id))
    expect(startLog).toContain('howdy from start')
    for (const secret of agentTokens.filter((s) => s !== '')) expect(startLog).not.toContain(secret)
    expect((await t.call('GET', '/api/v1/workspaces/dev', { token })).json.status).toBe('running')

    const stopped = await build('dev', 'stop')
    expect(stopped.status).toBe('succeeded')
    // The state from the start build let terraform destroy the counted resource.
    expect(logText(await logsOf(stopped.id))).toMatch(/terraform_data\.workspace\[0\].*destr/i)
    expect((await t.call('GET', '/api/v1/workspaces/dev', { token })).json.status).toBe('stopped')

    const localDir = join(t.coordinator.dataDir, 'workspaces', created.json.workspace.id)
    expect(existsSync(localDir)).toBe(true)
    const deleted = await build('dev', 'delete')
    expect(deleted.status).toBe('succeeded')
    expect(logText(await logsOf(deleted.id))).toContain('removing the home folder')
    expect((await t.call('GET', '/api/v1/workspaces/dev', { token })).status).toBe(404)
    // The coordinator made the folder for the workspace, and removes it with it.
    expect(existsSync(localDir)).toBe(false)
  })

  it("should fail a build whose parameter breaks the template's validation", async () => {
    const created = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'loud', template: 'echo', parameters: { greeting: 'x'.repeat(30) } },
    })
    const failed = await waitForBuild(t, token, created.json.build.id)
    expect(failed.status).toBe('failed')
    expect(failed.error).toBeTruthy()
    expect(logText(await logsOf(failed.id))).toContain('The greeting must be shorter than 20')
    expect((await t.call('GET', '/api/v1/workspaces/loud', { token })).json.status).toBe('failed')

    expect((await build('loud', 'delete')).status).toBe('succeeded')
  })
})

describe('deleting workspaces that cannot build', () => {
  let t: TestCoordinator
  let token: string

  beforeAll(async () => {
    t = await testCoordinator({ provision })
    token = await t.owner()
    const push = async (name: string, main: string) => {
      const content = Buffer.from(main).toString('base64')
      const res = await t.call('POST', `/api/v1/templates/${name}/versions`, {
        token,
        body: { files: [{ path: 'main.tf', content }] },
      })
      expect(res.status).toBe(201)
    }
    await push('echo', MAIN_TF)
    // Passes the push checks; terraform init fails on it.
    await push('broken', 'resource "terraform_data" {\n')
    // Its only resource refuses to be destroyed.
    await push(
      'stuck',
      `
resource "terraform_data" "stuck" {
  provisioner "local-exec" {
    when    = destroy
    command = "echo cannot destroy this; exit 1"
  }
}
`,
    )
  })

  afterAll(async () => {
    await t?.cleanup()
  })

  async function create(name: string, template: string, parameters?: Record<string, string>) {
    const res = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name, template, parameters },
    })
    expect(res.status).toBe(201)
    return {
      id: res.json.workspace.id as string,
      build: await waitForBuild(t, token, res.json.build.id),
    }
  }

  async function remove(name: string) {
    const res = await t.call('POST', `/api/v1/workspaces/${name}/builds`, {
      token,
      body: { transition: 'delete' },
    })
    expect(res.status).toBe(201)
    const build = await waitForBuild(t, token, res.json.id)
    const logs = await t.call('GET', `/api/v1/builds/${res.json.id}/logs`, { token })
    return { build, log: logs.text }
  }

  it('should delete a workspace of a template version terraform cannot init', async () => {
    const { id, build } = await create('broken', 'broken')
    expect(build).toMatchObject({ status: 'failed', error: 'terraform init: exit status 1' })

    const { build: deleted, log } = await remove('broken')
    expect(deleted.status).toBe('succeeded')
    expect(log).toContain('terraform init: exit status 1')
    expect(log).toContain('nothing is left to destroy, so the workspace is removed')
    expect((await t.call('GET', '/api/v1/workspaces/broken', { token })).status).toBe(404)
    expect(existsSync(join(t.coordinator.dataDir, 'workspaces', id))).toBe(false)
    expect(await t.coordinator.store.states.get(id)).toBeUndefined()
  })

  it('should delete a workspace made with a parameter no build can pass (before they were refused)', async () => {
    // Its start fails before it creates anything.
    const { id, build } = await create('legacy', 'echo', { greeting: 'x'.repeat(30) })
    expect(build.status).toBe('failed')
    // What the store holds for a workspace created before parameters were checked.
    const record = (await t.coordinator.store.workspaces.get(id))!
    await t.coordinator.store.workspaces.put(id, { ...record, parameters: { greeting: 'a\0b' } })

    const { build: deleted, log } = await remove('legacy')
    expect(deleted.status).toBe('succeeded')
    expect(log).toContain('Variable greeting contains a NUL byte.')
    expect(log).toContain("the workspace's Terraform state records no resources")
    expect((await t.call('GET', '/api/v1/workspaces/legacy', { token })).status).toBe(404)
  })

  it('should keep a workspace whose failed delete leaves resources in its state', async () => {
    const { id, build } = await create('stuck', 'stuck')
    expect(build.status).toBe('succeeded')

    const { build: deleted, log } = await remove('stuck')
    expect(deleted).toMatchObject({ status: 'failed', error: 'terraform destroy: exit status 1' })
    expect(log).toContain('cannot destroy this')
    expect(log).not.toContain('nothing is left to destroy')
    const ws = await t.call('GET', '/api/v1/workspaces/stuck', { token })
    expect(ws.json.status).toBe('failed')
    const state = Buffer.from((await t.coordinator.store.states.get(id))!, 'base64').toString()
    expect(state).toContain('"terraform_data"')
    expect(existsSync(join(t.coordinator.dataDir, 'workspaces', id))).toBe(true)
  })
})
