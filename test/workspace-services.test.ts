/**
 * Workspace services end to end, on one real server with real terraform and
 * the shipped `local` template: the startup script (its log, a failing one's
 * start error), the agent's lifecycle state, stats and listening ports in
 * `show`, the ports offered by `port-forward`, and the agent's peer identity
 * across a restart of its process.
 */
import { execa } from 'execa'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { dirname } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AgentLogLine, Workspace } from '../sdk/api-types.ts'
import {
  BIN,
  localWorkspaceDir,
  loginOwner,
  processesUnder,
  removeTree,
  startTestServer,
  waitFor,
  type TestServer,
} from './harness.ts'

/** A TCP port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

describe('workspace services', () => {
  let server: TestServer
  let port: number

  const show = async (name: string): Promise<Workspace> => {
    const r = await server.cli(['show', name, '-o', 'json'])
    expect(r.exitCode, r.stderr).toBe(0)
    return JSON.parse(r.stdout) as Workspace
  }

  const lifecycleIs =
    (name: string, ...states: string[]) =>
    async (): Promise<boolean> =>
      states.includes((await show(name)).agent?.lifecycle ?? '')

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
    const push = await server.cli(['templates', 'push', 'local'])
    expect(push.exitCode, push.stderr).toBe(0)
    port = await freePort()
  }, 60_000)

  afterAll(async () => {
    if (server === undefined) return
    for (const name of ['svc', 'bad', 'slow']) await server.cli(['delete', name, '-y'])
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(dirname(server.dataDir))
  }, 120_000)

  it('should run the startup script once started, and show its output in logs', async () => {
    // Output on both streams, whether the agent token reached the script,
    // and a listener left running in the background.
    const listen = `require('net').createServer().listen(${port}, '127.0.0.1')`
    const script = [
      'echo hello-from-startup',
      'echo to-stderr >&2',
      'echo "token-in-env=$(env | grep -c CODER_MESH_AGENT_TOKEN)"',
      `nohup node -e "${listen}" >/dev/null 2>&1 &`,
    ].join('\n')
    const create = await server.cli([
      'create',
      'svc',
      '--template',
      'local',
      '--parameter',
      `startup_script=${script}`,
      '-y',
    ])
    expect(create.exitCode, create.stderr).toBe(0)

    await waitFor('the agent to be ready', lifecycleIs('svc', 'ready'), 60_000)

    const logs = await server.cli(['logs', 'svc'])
    expect(logs.exitCode, logs.stderr).toBe(0)
    expect(logs.stdout).toMatch(/^\S+ hello-from-startup$/m)
    expect(logs.stdout).toMatch(/^\S+ \[stderr\] to-stderr$/m)
    expect(logs.stdout).toMatch(/token-in-env=0$/m)
    expect(logs.stdout).toMatch(/\[agent\] the startup script finished$/m)

    const json = await server.cli(['logs', 'svc', '-o', 'json'])
    const lines = json.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AgentLogLine)
    expect(lines).toContainEqual(
      expect.objectContaining({ type: 'log', stream: 'stdout', text: 'hello-from-startup' }),
    )
    expect(lines.map((l) => l.seq)).toEqual(lines.map((_, i) => i + 1))

    // The agent's own copy on disk.
    const ws = await show('svc')
    const disk = await readFile(`${localWorkspaceDir(server, ws.id)}/startup-script.log`, 'utf8')
    expect(disk).toMatch(/hello-from-startup/)

    const list = await server.cli(['list'])
    expect(list.stdout).toMatch(/svc\s+local\s+running\s+connected, ready/)
  }, 120_000)

  it('should follow the log with -f until interrupted', async () => {
    const follow = execa(BIN, ['logs', 'svc', '-f'], {
      env: server.env,
      extendEnv: false,
      reject: false,
    })
    let seen = ''
    follow.stdout?.on('data', (chunk: Buffer) => (seen += chunk.toString()))
    await waitFor('followed lines', async () => seen.includes('hello-from-startup'), 15_000)
    // Still running: following waits for new lines.
    await new Promise((r) => setTimeout(r, 500))
    expect(follow.exitCode).toBeNull()
    follow.kill('SIGINT')
    const r = await follow
    expect(r.exitCode).toBe(0)
  }, 30_000)

  it('should show stats and the listening port started by the startup script', async () => {
    await waitFor(
      'the listening port in show',
      async () => ((await show('svc')).agent?.ports ?? []).some((p) => p.port === port),
      30_000,
    )
    const ws = await show('svc')
    expect(ws.agent?.ports).toContainEqual({
      port,
      network: 'tcp',
      address: '127.0.0.1',
      process: 'node',
    })
    const stats = ws.agent?.stats
    expect(stats?.cpuCores).toBeGreaterThan(0)
    expect(stats?.memoryTotalBytes).toBeGreaterThan(stats?.memoryUsedBytes ?? Infinity)
    expect(stats?.diskTotalBytes).toBeGreaterThan(0)

    const human = await server.cli(['show', 'svc'])
    expect(human.stdout).toMatch(/^Lifecycle:\s+ready$/m)
    expect(human.stdout).toMatch(/^CPU:\s+[\d.]+% of \d+ cores$/m)
    expect(human.stdout).toMatch(/^Memory:\s+\S+ \S+ of \S+ \S+ \(\d+%\)$/m)
    const portLine = `(Listening ports:)? +${port}/tcp node \\(127\\.0\\.0\\.1\\)`
    expect(human.stdout).toMatch(new RegExp(`^${portLine}$`, 'm'))
  }, 60_000)

  it('should count an open SSH session, its connection path and its bytes', async () => {
    const before = (await show('svc')).agent?.stats
    const session = server.cli(['ssh', 'svc', '--', 'head -c 300000 /dev/zero; sleep 8'])
    await waitFor(
      'an SSH session in the stats',
      async () => {
        const stats = (await show('svc')).agent?.stats
        return (stats?.sshSessions ?? 0) >= 1 && (stats?.txBytes ?? 0) >= 300_000
      },
      20_000,
    )
    const stats = (await show('svc')).agent!.stats!
    // On loopback the client reaches the agent directly, as `ping` reports too.
    expect(stats.connections.direct).toBeGreaterThanOrEqual(1)
    expect(stats.rxBytes).toBeGreaterThan(before?.rxBytes ?? 0)
    const r = await session
    expect(r.exitCode).toBe(0)
    await waitFor(
      'the session to leave the stats',
      async () => (await show('svc')).agent?.stats?.sshSessions === 0,
      20_000,
    )
  }, 60_000)

  it('should name the listening ports when port-forward has no --tcp', async () => {
    const r = await server.cli(['port-forward', 'svc'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toMatch(/^error: Nothing to forward: add --tcp LOCAL:REMOTE\./)
    expect(r.stderr).toMatch(new RegExp(`listens on .*\\b${port} \\(node\\)`))
    expect(r.stderr).toMatch(/\(MESH_BAD_ARGUMENT\)\n?$/)
  })

  it('should keep its peer id across an agent restart, and not run the script again', async () => {
    const ws = await show('svc')
    const dir = localWorkspaceDir(server, ws.id)
    const peerId = ws.agent!.peerId
    const pid = Number((await readFile(`${dir}/agent.pid`, 'utf8')).trim())

    // The agent's own environment (URL, token, folder) to start it again with.
    const environ = await agentEnviron(dir)
    process.kill(-pid, 'SIGTERM')
    await waitFor('the agent to stop', async () => !alive(pid), 20_000)
    // Its last word on the way out.
    const stopped = (await show('svc')).agent
    expect(stopped?.lifecycle).toBe('off')
    expect(stopped?.connected).toBe(false)
    // No waiting for an agent that said it stopped, and a way out.
    const refused = await server.cli(['ssh', 'svc', '--', 'true'], { timeout: 30_000 })
    expect(refused.exitCode).not.toBe(0)
    expect(refused.stderr).toMatch(/has stopped.*coder-mesh restart svc.*MESH_AGENT_NOT_CONNECTED/)
    expect(refused.stderr).not.toMatch(/Waiting for the agent/)

    const restarted = execa(BIN, ['agent'], {
      env: environ,
      extendEnv: false,
      cwd: `${dir}/home`,
      detached: true,
      reject: false,
      stdio: 'ignore',
    })
    restarted.unref()
    try {
      await waitFor(
        'the restarted agent to be ready again',
        async () => {
          const agent = (await show('svc')).agent
          return (
            agent?.connected === true &&
            agent.lifecycle === 'ready' &&
            agent.lastSeenAt > ws.agent!.lastSeenAt
          )
        },
        60_000,
      )
      const again = await show('svc')
      expect(again.agent?.peerId).toBe(peerId)

      const ssh = await server.cli(['ssh', 'svc', '--', 'echo still-here'])
      expect(ssh.stdout.trim()).toBe('still-here')
      expect(ssh.exitCode).toBe(0)

      const logs = await server.cli(['logs', 'svc'])
      expect(logs.stdout.match(/hello-from-startup/g)).toHaveLength(1)
    } finally {
      if (restarted.pid !== undefined) {
        try {
          process.kill(-restarted.pid, 'SIGTERM')
        } catch {
          // Already gone.
        }
      }
    }
  }, 120_000)

  it('should report a failing startup script as a start error in show', async () => {
    const create = await server.cli([
      'create',
      'bad',
      '--template',
      'local',
      '--parameter',
      'startup_script=echo about-to-fail; exit 3',
      '-y',
    ])
    expect(create.exitCode, create.stderr).toBe(0)
    await waitFor('a start error', lifecycleIs('bad', 'start_error'), 60_000)

    const ws = await show('bad')
    expect(ws.agent?.startError).toBe('the startup script exited with status 3')
    const human = await server.cli(['show', 'bad'])
    expect(human.stdout).toMatch(/^Lifecycle:\s+start_error$/m)
    expect(human.stdout).toMatch(/^Start error:\s+the startup script exited with status 3$/m)
    const list = await server.cli(['list'])
    expect(list.stdout).toMatch(/bad\s+local\s+running\s+connected, start error/)

    const logs = await server.cli(['logs', 'bad'])
    expect(logs.stdout).toMatch(/about-to-fail/)
    expect(logs.stdout).toMatch(/\[agent\] the startup script exited with status 3$/m)
  }, 120_000)

  it('should stop a startup script past its timeout and report start_timeout', async () => {
    const create = await server.cli([
      'create',
      'slow',
      '--template',
      'local',
      '--parameter',
      // More output than the agent log keeps, then a script that will not end.
      "startup_script=yes 'a line of output' | head -n 20000; exec sleep 60",
      '--parameter',
      'startup_script_timeout=1',
      '-y',
    ])
    expect(create.exitCode, create.stderr).toBe(0)
    await waitFor('a start timeout', lifecycleIs('slow', 'start_timeout'), 60_000)
    const ws = await show('slow')
    expect(ws.agent?.startError).toBe('timed out after 1 s')
    // The script's process is gone, not left running.
    const dir = localWorkspaceDir(server, ws.id)
    const sleeping = []
    for (const pid of await processesUnder(dir)) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
      if (cmdline.startsWith('sleep\u000060')) sleeping.push(pid)
    }
    expect(sleeping).toEqual([])

    const logs = await server.cli(['logs', 'slow', '-o', 'json'])
    const lines = logs.stdout.trim().split('\n')
    expect(lines.length).toBeLessThanOrEqual(10_000)
    expect(lines.length).toBeGreaterThan(9_000)
    // The cut is said, and how the script ended still follows it.
    expect(logs.stdout).toMatch(/log truncated: over \d+ lines or \d+ KiB of output/)
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({
      stream: 'agent',
      text: 'timed out after 1 s',
    })
  }, 120_000)
})

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The environment of the agent process of the workspace folder `dir`. */
async function agentEnviron(dir: string): Promise<Record<string, string>> {
  const pid = Number((await readFile(`${dir}/agent.pid`, 'utf8')).trim())
  for (const candidate of await processesUnder(dir)) {
    const cmdline = await readFile(`/proc/${candidate}/cmdline`, 'utf8').catch(() => '')
    if (!cmdline.includes('agent')) continue
    const stat = await readFile(`/proc/${candidate}/stat`, 'utf8').catch(() => '')
    const pgrp = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2])
    if (pgrp !== pid) continue
    const environ = await readFile(`/proc/${candidate}/environ`, 'utf8')
    const env: Record<string, string> = {}
    for (const entry of environ.split('\0')) {
      const eq = entry.indexOf('=')
      if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1)
    }
    if (env.CODER_MESH_AGENT_TOKEN !== undefined) return env
  }
  throw new Error(`no agent process found for ${dir}`)
}
