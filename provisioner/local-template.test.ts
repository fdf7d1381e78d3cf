/**
 * The default template (examples/templates/local) run through the
 * provisioner, with `sleep 300` standing in for the agent.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Transition } from '../sdk/api-types.ts'
import {
  provision,
  type ProvisionFile,
  type ProvisionLogLine,
  type ProvisionResult,
} from './index.ts'
import { groupMembers, processEnvironment } from './test-helpers.ts'

const TEMPLATE = fileURLToPath(new URL('../examples/templates/local/', import.meta.url))
const TOKEN = 'agent-token-Zq81mXpL'
const MESH_URL = 'http://127.0.0.1:7080'

let root: string
let files: ProvisionFile[]
let builds = 0
/** Every agent pid seen, killed in afterAll should a test leave one behind. */
const pids = new Set<number>()

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'mesh-local-template-'))
  files = []
  for (const name of await readdir(TEMPLATE)) {
    files.push({ path: name, content: await readFile(join(TEMPLATE, name)) })
  }
})

afterAll(async () => {
  for (const pid of pids) {
    for (const member of groupMembers(pid)) {
      try {
        process.kill(member.pid, 'SIGKILL')
      } catch {
        // Gone already.
      }
    }
  }
  await rm(root, { recursive: true, force: true })
})

interface Run {
  result: ProvisionResult
  text: string
}

class Workspace {
  readonly dir: string
  readonly command: string
  state: Buffer | undefined

  constructor(name: string, command = 'sleep 300') {
    this.dir = join(root, 'workspaces', name)
    this.command = command
  }

  async build(transition: Transition): Promise<Run> {
    builds++
    const lines: ProvisionLogLine[] = []
    const result = await provision(
      {
        buildId: `build-${builds}`,
        transition,
        files,
        variables: {
          coder_mesh_url: MESH_URL,
          coder_mesh_agent_token: TOKEN,
          coder_mesh_agent_command: this.command,
          coder_mesh_workspace_name: 'dev',
          coder_mesh_workspace_owner: 'alice',
          coder_mesh_workspace_id: 'ws-1',
          coder_mesh_transition: transition,
          coder_mesh_start_count: transition === 'start' ? '1' : '0',
          coder_mesh_local_dir: this.dir,
        },
        sensitive: ['coder_mesh_agent_token'],
        state: this.state,
        workRoot: join(root, 'builds'),
      },
      { onLog: (line) => lines.push(line) },
    )
    this.state = result.state
    const text = lines.map((line) => line.text).join('\n')
    if (!result.ok && transition !== 'start') throw new Error(`${transition} failed:\n${text}`)
    return { result, text }
  }

  async pid(): Promise<number> {
    const pid = Number((await readFile(join(this.dir, 'agent.pid'), 'utf8')).trim())
    pids.add(pid)
    return pid
  }
}

describe('examples/templates/local', () => {
  it('starts, stops, restarts and deletes the agent process', async () => {
    const ws = new Workspace('dev')

    const start = await ws.build('start')
    expect(start.result.ok).toBe(true)
    expect(start.text).toMatch(/agent: running as process group \d+/)
    const first = await ws.pid()
    const members = groupMembers(first)
    expect(members.map((p) => p.cmdline)).toContain('sleep 300')

    // The agent's environment: what it needs, and none of Terraform's copies.
    const env = processEnvironment(first)
    expect(env).toMatchObject({
      CODER_MESH_URL: MESH_URL,
      CODER_MESH_AGENT_TOKEN: TOKEN,
      CODER_MESH_AGENT_DIR: ws.dir,
      HOME: join(ws.dir, 'home'),
    })
    expect(Object.keys(env ?? {}).filter((name) => name.startsWith('TF_'))).toEqual([])
    expect(env?.CODER_MESH_AGENT_COMMAND).toBeUndefined()
    // The token is on no command line, in no log and not in the state.
    expect(members.some((p) => p.cmdline.includes(TOKEN))).toBe(false)
    expect(start.text).not.toContain(TOKEN)
    expect(ws.state?.toString()).not.toContain(TOKEN)
    expect(existsSync(join(ws.dir, 'home'))).toBe(true)

    const stop = await ws.build('stop')
    expect(stop.text).toContain(`agent: stopping process group ${first}`)
    expect(groupMembers(first)).toEqual([])
    expect(existsSync(join(ws.dir, 'agent.pid'))).toBe(false)
    expect(existsSync(join(ws.dir, 'home'))).toBe(true)

    const again = await ws.build('start')
    expect(again.result.ok).toBe(true)
    const second = await ws.pid()
    expect(second).not.toBe(first)
    expect(groupMembers(second).map((p) => p.cmdline)).toContain('sleep 300')

    // A start build on a running workspace starts the agent afresh.
    const restart = await ws.build('start')
    expect(restart.result.ok).toBe(true)
    const third = await ws.pid()
    expect(third).not.toBe(second)
    expect(groupMembers(second)).toEqual([])
    expect(groupMembers(third)).not.toEqual([])

    const del = await ws.build('delete')
    expect(del.text).toContain('Destroy complete! Resources: 2 destroyed.')
    expect(groupMembers(third)).toEqual([])
    expect(existsSync(ws.dir)).toBe(false)
  })

  it('stops a running agent when the workspace is deleted', async () => {
    const ws = new Workspace('delete-running')
    expect((await ws.build('start')).result.ok).toBe(true)
    const pid = await ws.pid()

    await ws.build('delete')
    expect(groupMembers(pid)).toEqual([])
    expect(existsSync(ws.dir)).toBe(false)
  })

  it('fails the build, showing the agent’s output, when the agent exits at once', async () => {
    const ws = new Workspace('broken', 'echo agent cannot start >&2; exit 7')
    const { result, text } = await ws.build('start')

    expect(result).toMatchObject({ ok: false, error: 'terraform apply: exit status 1' })
    expect(text).toContain('agent: exited right after it started')
    expect(text).toContain('agent cannot start')
    expect(existsSync(join(ws.dir, 'agent.pid'))).toBe(false)

    await ws.build('delete')
    expect(existsSync(ws.dir)).toBe(false)
  })

  it('kills an agent that ignores SIGTERM', { timeout: 60_000 }, async () => {
    const ws = new Workspace('stubborn', "trap '' TERM; sleep 300 & wait; sleep 300")
    expect((await ws.build('start')).result.ok).toBe(true)
    const pid = await ws.pid()

    const stop = await ws.build('stop')
    expect(stop.text).toContain('agent: still running after 10 s; killing it')
    expect(groupMembers(pid)).toEqual([])
    await ws.build('delete')
  })

  it(
    'stops every process of the workspace when the agent was killed, and no other',
    { timeout: 60_000 },
    async () => {
      const ws = new Workspace('orphans')
      expect((await ws.build('start')).result.ok).toBe(true)
      const agent = await ws.pid()

      // What the agent starts, such as an SSH session's `sleep 300`, runs in
      // a session of its own and carries the workspace folder in its environment.
      const spawnWith = (dir: string, script: string): number => {
        const child = spawn('sh', ['-c', script], {
          detached: true,
          stdio: 'ignore',
          env: { PATH: process.env.PATH, CODER_MESH_AGENT_DIR: dir },
        })
        child.unref()
        pids.add(child.pid ?? 0)
        return child.pid ?? 0
      }
      const session = spawnWith(ws.dir, 'sleep 300; :')
      const stubborn = spawnWith(ws.dir, "trap '' TERM; sleep 300; :")
      // Another workspace's, one named after a folder inside this one, and one
      // that only mentions the folder in another variable: none of them ours.
      const other = spawnWith(`${ws.dir}-2`, 'sleep 300; :')
      const nested = spawnWith(join(ws.dir, 'home'), 'sleep 300; :')
      const child = spawn('sleep', ['300'], {
        detached: true,
        stdio: 'ignore',
        env: { NOT_THE_AGENT_DIR: ws.dir, X: `CODER_MESH_AGENT_DIR=${ws.dir}` },
      })
      child.unref()
      const mention = child.pid ?? 0
      pids.add(mention)
      const alive = (pid: number) => groupMembers(pid).length > 0
      for (const pid of [session, stubborn, other, nested, mention]) expect(alive(pid)).toBe(true)

      // The agent dies without stopping anything.
      process.kill(-agent, 'SIGKILL')
      for (let i = 0; i < 100 && alive(agent); i++) await new Promise((r) => setTimeout(r, 50))
      expect(alive(agent)).toBe(false)

      const del = await ws.build('delete')
      expect(del.text).toContain("agent: stopping the workspace's other processes:")
      expect(del.text).toContain('agent: still running after 10 s; killing:')
      expect(alive(session)).toBe(false)
      expect(alive(stubborn)).toBe(false)
      expect(existsSync(ws.dir)).toBe(false)
      for (const pid of [other, nested, mention]) expect(alive(pid)).toBe(true)
      for (const pid of [other, nested, mention]) process.kill(-pid, 'SIGKILL')
    },
  )

  it('ends what a crashed agent left running when a start replaces it', async () => {
    const ws = new Workspace('replace')
    expect((await ws.build('start')).result.ok).toBe(true)
    const agent = await ws.pid()
    const child = spawn('sleep', ['300'], {
      detached: true,
      stdio: 'ignore',
      env: { CODER_MESH_AGENT_DIR: ws.dir },
    })
    child.unref()
    const session = child.pid ?? 0
    pids.add(session)
    process.kill(-agent, 'SIGKILL')

    const again = await ws.build('start')
    expect(again.result.ok).toBe(true)
    expect(again.text).toContain(`agent: stopping the workspace's other processes: ${session}`)
    expect(groupMembers(session)).toEqual([])
    // The new agent was started after the sweep, and runs.
    expect(groupMembers(await ws.pid()).map((p) => p.cmdline)).toContain('sleep 300')
    await ws.build('delete')
  })

  it('leaves alone a process whose pid a stale pid file names', async () => {
    const dir = join(root, 'stale')
    await execa('sh', [join(TEMPLATE, 'agent.sh'), 'prepare'], {
      env: { CODER_MESH_AGENT_DIR: dir },
    })
    const stranger = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' })
    const pid = stranger.pid ?? 0
    pids.add(pid)
    await writeFile(join(dir, 'agent.pid'), `${pid}\n`)

    const { stdout } = await execa('sh', [join(TEMPLATE, 'agent.sh'), 'stop'], {
      env: { CODER_MESH_AGENT_DIR: dir },
    })

    expect(stdout).toContain(`agent: not running (process ${pid} is gone)`)
    expect(groupMembers(pid).map((p) => p.cmdline)).toEqual(['sleep 300'])
    expect(existsSync(join(dir, 'agent.pid'))).toBe(false)
    stranger.kill('SIGKILL')
  })

  it('does not remove a folder it did not create', async () => {
    const dir = join(root, 'not-ours')
    await execa('mkdir', ['-p', dir])
    await writeFile(join(dir, 'precious.txt'), 'keep me')

    const { stderr } = await execa('sh', [join(TEMPLATE, 'agent.sh'), 'remove'], {
      env: { CODER_MESH_AGENT_DIR: dir },
    })

    expect(stderr).toContain('not removing')
    expect(await readFile(join(dir, 'precious.txt'), 'utf8')).toBe('keep me')
  })
})
