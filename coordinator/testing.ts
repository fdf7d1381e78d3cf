/**
 * Fixtures for the coordinator's tests: a coordinator on a temporary data
 * folder with a silent logger and the real provisioner (real `terraform`),
 * request helpers over `app.request()`, and templates whose builds a test
 * can hold, fail and look into (see `openProbe`).
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Hono } from 'hono'
import { createLogger } from '../sdk/logger.ts'
import { createApp } from './api.ts'
import type { ProvisionFn } from './builds.ts'
import { openCoordinator, type Coordinator } from './coordinator.ts'
import type { AppEnv } from './http.ts'
import type { LoginLimitsInit } from './login-limits.ts'

export const PASSWORD = 'correct horse battery'

export interface TestCoordinator {
  coordinator: Coordinator
  app: Hono<AppEnv>
  dataDir: string
  /** Every response body seen through `call`, for whole-suite checks. */
  bodies: string[]
  call(method: string, path: string, init?: CallInit): Promise<Called>
  /** Creates the first user and logs in; returns the session token. */
  owner(): Promise<string>
  /** Creates a user (as `by`, an owner's token) with PASSWORD and logs in; returns the session token. */
  user(by: string, username: string, roles?: string[]): Promise<string>
  /** Logs in with PASSWORD; returns the session token. */
  login(username: string): Promise<string>
  /** Closes the coordinator (idempotent); keeps the data folder. */
  close(): Promise<void>
  /** Closes and deletes the data folder. */
  cleanup(): Promise<void>
}

export interface CallInit {
  token?: string
  /** Sent as JSON unless it is a string (then sent as is). */
  body?: unknown
  headers?: Record<string, string>
  /** The client address the request appears to come from; default none (`unknown`). */
  address?: string
}

export interface Called {
  status: number
  headers: Headers
  text: string
  /** The body parsed as JSON; undefined when it is not JSON. */
  json: any // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface TestInit {
  /** Default: the real provisioner, running terraform. */
  provision?: ProvisionFn
  dataDir?: string
  loginLimits?: LoginLimitsInit
  heartbeatSeconds?: number
  now?: () => number
}

export async function testCoordinator(init: TestInit = {}): Promise<TestCoordinator> {
  const dataDir = init.dataDir ?? (await mkdtemp(join(tmpdir(), 'mesh-coordinator-')))
  const coordinator = await openCoordinator({
    dataDir,
    accessUrl: 'http://127.0.0.1:7080',
    p2pListen: ['/ip4/127.0.0.1/tcp/0'],
    log: createLogger('mesh:coordinator:test', 'silent'),
    // Undefined: the coordinator's own default, the real provisioner.
    provision: init.provision,
    buildGrace: 2000,
    loginLimits: init.loginLimits,
    heartbeatSeconds: init.heartbeatSeconds,
    now: init.now,
  })
  const app = createApp(coordinator)
  const bodies: string[] = []

  const call: TestCoordinator['call'] = async (method, path, callInit = {}) => {
    const headers: Record<string, string> = { ...callInit.headers }
    if (callInit.token !== undefined) headers.authorization = `Bearer ${callInit.token}`
    let body: string | undefined
    if (callInit.body !== undefined) {
      body = typeof callInit.body === 'string' ? callInit.body : JSON.stringify(callInit.body)
      headers['content-type'] ??= 'application/json'
    }
    const env =
      callInit.address === undefined
        ? undefined
        : { incoming: { socket: { remoteAddress: callInit.address } } as never }
    const res = await app.request(path, { method, headers, body }, env)
    const text = await res.text()
    bodies.push(text)
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = undefined
    }
    return { status: res.status, headers: res.headers, text, json }
  }

  const login = async (username: string): Promise<string> => {
    const res = await call('POST', '/api/v1/users/login', {
      body: { username, password: PASSWORD },
    })
    if (res.status !== 200) throw new Error(`login ${username}: ${res.text}`)
    return res.json.sessionToken as string
  }

  const close = () => coordinator.close()
  return {
    coordinator,
    app,
    dataDir,
    bodies,
    call,
    async owner() {
      const user = { username: 'alice', email: 'alice@example.com', password: PASSWORD }
      await call('POST', '/api/v1/users/first', { body: user })
      const login = await call('POST', '/api/v1/users/login', {
        body: { username: 'alice', password: PASSWORD },
      })
      return login.json.sessionToken as string
    },
    async user(by, username, roles = ['member']) {
      const body = { username, email: `${username}@example.com`, password: PASSWORD, roles }
      const res = await call('POST', '/api/v1/users', { token: by, body })
      if (res.status !== 201) throw new Error(`create user ${username}: ${res.text}`)
      return login(username)
    },
    login,
    close,
    async cleanup() {
      await close()
      await rm(dataDir, { recursive: true, force: true })
    },
  }
}

/** A tiny valid template: one file, base64. */
export function templateBody(text = 'variable "coder_mesh_url" {}\n') {
  return { files: [{ path: 'main.tf', content: Buffer.from(text).toString('base64') }] }
}

/** Polls GET /builds/:id until it is finished. */
export async function waitForBuild(t: TestCoordinator, token: string, id: string) {
  for (let i = 0; i < 600; i++) {
    const res = await t.call('GET', `/api/v1/builds/${id}`, { token })
    if (res.json.status === 'succeeded' || res.json.status === 'failed') return res.json
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`build ${id} did not finish`)
}

/** Templates whose builds fail in the real terraform, each at one step. */
export const FAILING_TEMPLATES = {
  /** Passes the push checks; `terraform init` fails on it. */
  init: 'resource "terraform_data" {\n',
  /** Its apply fails: the local-exec exits 1. */
  apply: `
resource "terraform_data" "fails" {
  provisioner "local-exec" {
    command = "echo this apply fails on purpose; exit 1"
  }
}
`,
  /** Applies; its destroy fails, leaving the resource in the state. */
  destroy: `
resource "terraform_data" "stuck" {
  provisioner "local-exec" {
    when    = destroy
    command = "echo this destroy fails on purpose; exit 1"
  }
}
`,
}

/**
 * A template that reports what each build of it received, and a gate to hold
 * its builds at. Every apply (start and stop) writes, under
 * `<dir>/<workspace name>/`: `agent-token`, the token the build got (empty
 * for a stop); `env`, terraform's environment, so its TF_VAR_ variables;
 * `workdir`, the folder terraform ran in.
 */
export interface Probe {
  dir: string
  /** The probe template, as the body of a template version push. */
  template: ReturnType<typeof templateBody>
  /** The agent token the last apply of `workspace` received ('' after a stop). */
  agentToken(workspace: string): Promise<string>
  /** The TF_VAR_<name> values the last apply of `workspace` ran with, by name. */
  variables(workspace: string): Promise<Record<string, string>>
  /** The working directory of the last apply of `workspace`. */
  workdir(workspace: string): Promise<string>
  /** Makes the next apply of `workspace` wait at the gate until `release`. */
  hold(workspace: string): Promise<void>
  /** Resolves once an apply of `workspace` waits at the gate. */
  held(workspace: string): Promise<void>
  /** Whether an apply of `workspace` waits at the gate now. */
  isHeld(workspace: string): boolean
  /** Lets the held apply of `workspace` go on. */
  release(workspace: string): Promise<void>
  cleanup(): Promise<void>
}

/**
 * The probe's HCL, writing under `dir` (a temporary folder, so it needs no
 * quoting in HCL). Its only resources are built into terraform: init
 * downloads no provider, so there is no plugin cache to share.
 */
function probeTemplateText(dir: string): string {
  if (/["\\$%]/.test(dir)) throw new Error(`the probe cannot write under ${dir}`)
  return `
variable "coder_mesh_workspace_name" { type = string }
variable "coder_mesh_agent_token" {
  type      = string
  sensitive = true
}

locals {
  probe = "${dir}/\${var.coder_mesh_workspace_name}"
}

# Replaced on every apply, so that its local-execs run on each start and stop.
resource "terraform_data" "probe" {
  triggers_replace = timestamp()

  # A local-exec of its own: terraform hides the output of one that uses a
  # sensitive value, and the gate's lines below must show.
  provisioner "local-exec" {
    environment = { PROBE = local.probe, AGENT_TOKEN = var.coder_mesh_agent_token }
    command     = "mkdir -p \\"$PROBE\\" && printf %s \\"$AGENT_TOKEN\\" > \\"$PROBE/agent-token\\""
  }

  provisioner "local-exec" {
    environment = { PROBE = local.probe }
    command     = <<-EOT
      # Terraform's own environment: sh would drop names it cannot hold (a-b).
      cp "/proc/$PPID/environ" "$PROBE/env"
      pwd > "$PROBE/workdir"
      if [ -e "$PROBE/hold" ]; then
        echo "held at the gate"
        touch "$PROBE/held"
        # Ends with the probe's folder too: no shell outlives the test.
        while [ -d "$PROBE" ] && [ ! -e "$PROBE/go" ]; do sleep 0.05; done
        rm -f "$PROBE/hold" "$PROBE/held" "$PROBE/go"
        echo "through the gate"
      fi
    EOT
  }
}
`
}

export async function openProbe(): Promise<Probe> {
  const dir = await mkdtemp(join(tmpdir(), 'mesh-probe-'))
  const at = (workspace: string, file: string) => join(dir, workspace, file)
  return {
    dir,
    template: templateBody(probeTemplateText(dir)),
    agentToken: (workspace) => readFile(at(workspace, 'agent-token'), 'utf8'),
    async variables(workspace) {
      const env = await readFile(at(workspace, 'env'), 'utf8')
      const out: Record<string, string> = {}
      for (const entry of env.split('\0')) {
        const match = /^TF_VAR_([^=]+)=(.*)$/s.exec(entry)
        if (match !== null) out[match[1]!] = match[2]!
      }
      return out
    },
    workdir: async (workspace) => (await readFile(at(workspace, 'workdir'), 'utf8')).trim(),
    async hold(workspace) {
      await mkdir(join(dir, workspace), { recursive: true })
      await writeFile(at(workspace, 'hold'), '')
    },
    async held(workspace) {
      for (let i = 0; i < 1200; i++) {
        if (existsSync(at(workspace, 'held'))) return
        await new Promise((r) => setTimeout(r, 50))
      }
      throw new Error(`no build of ${workspace} reached the gate`)
    },
    isHeld: (workspace) => existsSync(at(workspace, 'held')),
    release: (workspace) => writeFile(at(workspace, 'go'), ''),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  }
}
