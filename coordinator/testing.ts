/**
 * Fixtures for the coordinator's tests: a coordinator on a temporary data
 * folder with a silent logger, a stub provisioner the test controls, and
 * request helpers over `app.request()`.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Hono } from 'hono'
import type { ProvisionJob, ProvisionOptions, ProvisionResult } from '../provisioner/index.ts'
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
    provision: init.provision ?? stubProvision().provision,
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

export interface StubProvision {
  provision: ProvisionFn
  jobs: ProvisionJob[]
  /** What the next builds do; default: log one line and succeed. */
  behave: (job: ProvisionJob, options: ProvisionOptions) => Promise<ProvisionResult>
}

export function stubProvision(): StubProvision {
  const stub: StubProvision = {
    jobs: [],
    behave: async (job, options) => {
      options.onLog({ source: 'stdout', text: `${job.transition} done` })
      return { ok: true, state: Buffer.from(`state after ${job.transition}`) }
    },
    provision: (job, options) => {
      stub.jobs.push(job)
      return stub.behave(job, options)
    },
  }
  return stub
}

/** A promise with its resolve exposed. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((r) => (resolve = r))
  return { promise, resolve }
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
