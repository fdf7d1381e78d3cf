/**
 * Crash recovery of builds: a real `coder-mesh server` in a child process
 * runs two builds through the real terraform and is killed with SIGKILL in
 * the middle of them, while their local-execs wait at a gate. One gate is
 * then opened: that terraform finishes by itself after the kill (its output
 * goes to files, so it is not killed by SIGPIPE on its next line) and leaves
 * its state; the other is still running when the server restarts, and the
 * restart interrupts it. Either way the state ends up in the store, the
 * working directories are gone, no terraform is left running, and the next
 * delete destroys what really exists.
 */
import { execa, type ResultPromise } from 'execa'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { procInfo, isLive } from '../provisioner/processes.ts'
import { liveProcesses } from '../provisioner/test-helpers.ts'
import { PASSWORD } from './testing.ts'

const BIN = fileURLToPath(new URL('../bin/coder-mesh', import.meta.url))
/** A duration no other process uses, to find leftovers by. */
const HUNG_SLEEP = '297.125'

const MAIN_TF = `
variable "coder_mesh_local_dir" { type = string }
variable "coder_mesh_workspace_name" { type = string }
variable "nap" { type = string }

resource "terraform_data" "slow" {
  input = var.coder_mesh_workspace_name
  provisioner "local-exec" {
    command = "cd '\${var.coder_mesh_local_dir}'; touch started; while [ ! -e go ]; do sleep \${var.nap}; done; echo through the gate"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "echo destroying \${self.input}"
  }
}
`

async function spawnServer(dataDir: string, home: string) {
  const child = execa(BIN, ['server', '--address', '127.0.0.1:0', '--data-dir', dataDir], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, CODER_MESH_LOG_LEVEL: 'error' },
    extendEnv: false,
    reject: false,
    buffer: false,
    stdin: 'ignore',
  })
  const url = await new Promise<string>((resolve, reject) => {
    let seen = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
      const match = /listening on (http:\/\/\S+)/.exec(seen)
      if (match?.[1] !== undefined) resolve(match[1])
    })
    void child.then((r) => reject(new Error(`server exited ${r.exitCode}: ${seen}`)))
  })
  return { child, url }
}

function api(url: string) {
  let token = ''
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(url + path, {
      method,
      headers: {
        ...(token === '' ? {} : { authorization: `Bearer ${token}` }),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
    return res.headers.get('content-type')?.startsWith('application/json') ? JSON.parse(text) : text
  }
  return {
    call,
    async login() {
      token = (await call('POST', '/api/v1/users/login', { username: 'alice', password: PASSWORD }))
        .sessionToken
    },
    async waitForBuild(id: string) {
      for (let i = 0; i < 1200; i++) {
        const build = await call('GET', `/api/v1/builds/${id}`)
        if (build.status === 'succeeded' || build.status === 'failed') return build
        await sleep(100)
      }
      throw new Error(`build ${id} did not finish`)
    },
    async logText(id: string): Promise<string> {
      const text = (await call('GET', `/api/v1/builds/${id}/logs`)) as string
      return text
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as { type: string; text?: string })
        .flatMap((e) => (e.type === 'log' ? [e.text] : []))
        .join('\n')
    },
  }
}

async function until(what: string, done: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

describe('crash recovery of builds', () => {
  const children: ResultPromise[] = []
  let base: string | undefined

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL')
    await Promise.allSettled(children)
    // Whatever a failed run left behind.
    for (const p of liveProcesses()) {
      if (p.cmdline.includes(`sleep ${HUNG_SLEEP}`)) process.kill(p.pid, 'SIGKILL')
    }
    if (base !== undefined) await rm(base, { recursive: true, force: true })
  })

  it('should stop the terraform a killed server left running and keep the state it left', async () => {
    base = await mkdtemp(join(tmpdir(), 'mesh-recovery-'))
    const dataDir = join(base, 'data')
    const first = await spawnServer(dataDir, base)
    children.push(first.child)

    const one = api(first.url)
    await one.call('POST', '/api/v1/users/first', {
      username: 'alice',
      email: 'alice@example.com',
      password: PASSWORD,
    })
    await one.login()
    const content = Buffer.from(MAIN_TF).toString('base64')
    await one.call('POST', '/api/v1/templates/slow/versions', {
      files: [{ path: 'main.tf', content }],
    })
    const create = async (name: string, nap: string) => {
      const res = await one.call('POST', '/api/v1/workspaces', {
        name,
        template: 'slow',
        parameters: { nap },
      })
      return { id: res.workspace.id as string, build: res.build.id as string }
    }
    // One finishes by itself after the kill; the other is still running at the restart.
    const fast = await create('fast', '0.1')
    const hung = await create('hung', HUNG_SLEEP)

    const workdir = (build: string) => join(dataDir, 'builds', build)
    const started = (ws: { id: string }) => join(dataDir, 'workspaces', ws.id, 'started')
    await until(
      'both local-execs to start',
      () => existsSync(started(fast)) && existsSync(started(hung)),
    )
    // What terraform printed before the kill is in the store.
    for (const ws of [fast, hung]) {
      for (let i = 0; !(await one.logText(ws.build)).includes('(local-exec): Executing'); i++) {
        if (i > 600) throw new Error('the local-exec never showed in the log')
        await sleep(100)
      }
    }
    const terraformPid = (build: string): number =>
      JSON.parse(readFileSync(join(workdir(build), '.coder-mesh', 'terraform.json'), 'utf8')).pid
    const fastPid = terraformPid(fast.build)
    const hungPid = terraformPid(hung.build)
    expect(isLive(procInfo(fastPid))).toBe(true)
    expect(isLive(procInfo(hungPid))).toBe(true)

    first.child.kill('SIGKILL')
    expect((await first.child).signal).toBe('SIGKILL')

    // The first terraform outlives the server, finishes and saves its state.
    await writeFile(join(dataDir, 'workspaces', fast.id, 'go'), '')
    await until('the fast terraform to finish', () => !isLive(procInfo(fastPid)))
    const left = readFileSync(join(workdir(fast.build), 'terraform.tfstate'), 'utf8')
    expect(left).toContain('"terraform_data"')
    expect(isLive(procInfo(hungPid))).toBe(true)

    const second = await spawnServer(dataDir, base)
    children.push(second.child)
    const two = api(second.url)
    await two.login()

    // Nothing of either build runs on, and their working directories are gone.
    expect(isLive(procInfo(hungPid))).toBe(false)
    expect(liveProcesses().filter((p) => p.cmdline.includes(`sleep ${HUNG_SLEEP}`))).toEqual([])
    expect(liveProcesses().filter((p) => p.pgid === hungPid || p.pgid === fastPid)).toEqual([])
    expect(existsSync(workdir(fast.build))).toBe(false)
    expect(existsSync(workdir(hung.build))).toBe(false)

    for (const ws of [fast, hung]) {
      const build = await two.call('GET', `/api/v1/builds/${ws.build}`)
      expect(build).toMatchObject({
        status: 'failed',
        error: 'coordinator restarted during the build',
      })
    }
    const fastLog = await two.logText(fast.build)
    expect(fastLog).toContain('terraform was no longer running')
    expect(fastLog).toContain('kept the Terraform state the build left in its working directory')
    const hungLog = await two.logText(hung.build)
    expect(hungLog).toContain(`terraform (process ${hungPid}) is still running: interrupting it`)
    expect(hungLog).toContain('kept the Terraform state the build left in its working directory')
    // The lines logged before the kill are still there, before the recovery's.
    expect(hungLog.indexOf('Provisioning with')).toBeGreaterThan(-1)
    expect(hungLog.indexOf('Provisioning with')).toBeLessThan(hungLog.indexOf('interrupting it'))

    // The deletes act on what the builds really created.
    for (const ws of [fast, hung]) {
      const del = await two.call(
        'POST',
        `/api/v1/workspaces/${ws === fast ? 'fast' : 'hung'}/builds`,
        {
          transition: 'delete',
        },
      )
      expect((await two.waitForBuild(del.id)).status).toBe('succeeded')
      const log = await two.logText(del.id)
      expect(log).toContain('Destroy complete! Resources: 1 destroyed.')
      // A tainted resource (the interrupted one) is destroyed without its destroy provisioners.
      if (ws === fast) expect(log).toContain('destroying fast')
    }

    second.child.kill('SIGTERM')
    expect((await second.child).exitCode).toBe(0)
  })
})
