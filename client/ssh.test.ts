/**
 * `coder-mesh ssh` against the real stack: a real `coder-mesh server`, one
 * workspace of the shipped `local` template (real Terraform, a real agent),
 * the libp2p mesh between them. Stdin EOF (B01), exit statuses and signals
 * (B02), full output (B04), sessions that end when the workspace stops or
 * the agent goes away (B06), waiting for a starting workspace, PTYs and the
 * ~. escape, and `--stdio` under OpenSSH.
 *
 * The tests share the workspace and run in order: the B06 test stops it,
 * the next ones use it stopped and start it again, and the last one kills
 * its agent.
 */
import { execa } from 'execa'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_MAX_CONCURRENT_BUILDS } from '../coordinator/constants.ts'
import { ApiClient } from '../sdk/api-client.ts'
import {
  BIN,
  localWorkspaceDir,
  loginOwner,
  processesUnder,
  removeTree,
  runCli,
  runOnTerminal,
  savedSession,
  startTestServer,
  waitFor,
  type TestServer,
} from '../test/harness.ts'
import { KEEPALIVE_COUNT_MAX, KEEPALIVE_INTERVAL_MS, WATCH_INTERVAL_MS } from './ssh-session.ts'

/** A build that holds a build slot for a while. */
const SLOW_TEMPLATE = `
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "sleep 15"
  }
}
`

/** How long a session may outlive its agent: no answer to keepalives for this long. */
const KEEPALIVE_BOUND_MS = KEEPALIVE_INTERVAL_MS * (KEEPALIVE_COUNT_MAX + 1)
/** Slack on top of the documented bounds: process start-up and a loaded machine. */
const SLACK_MS = 20_000

describe('coder-mesh ssh', { timeout: 180_000 }, () => {
  let server: TestServer
  let api: ApiClient
  let workspaceDir: string

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
    api = new ApiClient({
      url: server.url,
      token: (await savedSession(server.configDir)).sessionToken,
    })
    const push = await server.cli(['templates', 'push', 'local'])
    if (push.exitCode !== 0) throw new Error(`push failed: ${push.stderr}`)
    const create = await server.cli(['create', 'dev', '--template', 'local', '-y'])
    if (create.exitCode !== 0) throw new Error(`create failed: ${create.stdout}${create.stderr}`)
    const workspace = await api.workspace('dev')
    workspaceDir = localWorkspaceDir(server, workspace.id)
  }, 180_000)

  afterAll(async () => {
    if (server === undefined) return
    try {
      const del = await server.cli(['delete', 'dev', '-y'])
      expect(del.exitCode, del.stderr).toBe(0)
      await waitFor('no agent process left', async () => {
        return (await processesUnder(server.dataDir)).length === 0
      })
    } finally {
      await server.stop()
      for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
      await removeTree(dirname(server.dataDir))
    }
  }, 180_000)

  const ssh = (args: string[], input?: string | Buffer) =>
    runCli(server.env, ['ssh', ...args], { input, timeout: 120_000 })

  /** Waits until a process of the workspace runs exactly `argv`. */
  const waitForRemote = (argv: string[]): Promise<void> =>
    waitFor(`${argv.join(' ')} to run in the workspace`, async () => {
      for (const pid of await processesUnder(workspaceDir)) {
        const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
        if (cmdline === `${argv.join('\0')}\0`) return true
      }
      return false
    })

  it('should run a command and print its output', async () => {
    const r = await ssh(['dev', '--', 'echo $((6*7)); echo err >&2'])
    expect(r).toEqual({ exitCode: 0, stdout: '42\n', stderr: 'err\n' })
  })

  it('should deliver stdin and its EOF to the command (B01)', async () => {
    const r = await ssh(['dev', '--', 'wc', '-l'], 'a\nb\nc\n')
    expect(r.stdout.trim()).toBe('3')
    expect(r.exitCode).toBe(0)

    // Without the EOF, cat would wait until the run's timeout killed the CLI.
    const empty = await ssh(['coder-mesh.dev', '--', 'cat'])
    expect(empty).toEqual({ exitCode: 0, stdout: '', stderr: '' })
  })

  it('should exit with the remote status and print nothing extra (B02)', async () => {
    for (const code of [0, 1, 2, 7, 127, 255]) {
      const r = await ssh(['dev', '--', `exit ${code}`])
      expect(r.exitCode, `exit ${code}`).toBe(code)
      expect(r.stderr).toBe('')
    }
    expect((await ssh(['dev', '--', 'exit 256'])).exitCode).toBe(0)
    expect((await ssh(['dev', '--', 'nosuchcommand'])).exitCode).toBe(127)
  }, 240_000)

  it('should exit 128+N when the remote process dies of a signal (B02)', async () => {
    const r = await ssh(['dev', '--', 'kill -TERM $$'])
    expect(r).toEqual({ exitCode: 143, stdout: '', stderr: '' })
    expect((await ssh(['dev', '--', 'kill -KILL $$'])).exitCode).toBe(137)
  })

  it('should carry large stdout and stderr whole, then the status (B04)', async () => {
    const r = await ssh([
      'dev',
      '--',
      'yes abcdefg | head -c 5000000; yes err | head -c 100000 >&2; exit 3',
    ])
    expect(r.stdout.length).toBe(5_000_000)
    expect(r.stderr.length).toBe(100_000)
    expect(r.exitCode).toBe(3)

    const input = Buffer.alloc(3_000_000, 'x')
    const echoed = await ssh(['dev', '--', 'wc -c'], input)
    expect(echoed.stdout.trim()).toBe('3000000')
  })

  it('should carry raw SSH for OpenSSH with --stdio', async () => {
    const r = await server.ssh('dev', 'wc -l; exit 7', { input: 'a\nb\nc\n' })
    expect(r.stdout.trim()).toBe('3')
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(7)
  })

  it('should refuse --stdio with a command', async () => {
    const r = await ssh(['--stdio', 'dev', '--', 'ls'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toMatch(/MESH_BAD_ARGUMENT/)
  })

  it('should give an interactive session a PTY, its size and its exit status', async () => {
    const run = runOnTerminal(server.env, ['ssh', 'dev'], { cols: 100, rows: 30 })
    await run.waitFor(/\S/)
    run.term.write('echo READY-$((6*7))\r')
    await run.waitFor('READY-42')
    run.term.write('tty; stty size\r')
    await run.waitFor(/\/dev\/pts\/\d+/)
    await run.waitFor('30 100')
    // The new size travels as SIGWINCH -> window-change -> the remote PTY;
    // ask until it has arrived.
    run.term.resize(120, 40)
    for (let i = 0; i < 40 && !/40 120/.test(run.screen()); i++) {
      run.term.write('stty size\r')
      await new Promise((r) => setTimeout(r, 500))
    }
    expect(run.screen()).toMatch(/40 120/)
    run.term.write('exit 3\r')
    expect(await run.exited).toBe(3)
  })

  it('should end an interactive session at once on Enter ~ .', async () => {
    const run = runOnTerminal(server.env, ['ssh', 'dev'], { cols: 80, rows: 24 })
    await run.waitFor(/\S/)
    // A ~ inside a line is passed on: only the shell's output has X1~Y.
    run.term.write('echo X$((1))~Y\r')
    await run.waitFor('X1~Y')
    run.term.write('~.')
    expect(await run.exited).toBe(255)
    expect(run.screen()).toMatch(/Connection to dev closed/)
  })

  it('should end a session when the workspace stops (B06)', async () => {
    const session = ssh(['dev', '--', 'sleep 120'])
    await waitForRemote(['sleep', '120'])

    const stop = await server.cli(['stop', 'dev', '-y'])
    expect(stop.exitCode, stop.stderr).toBe(0)
    const stoppedAt = Date.now()
    const r = await session
    // A session notices within one watch interval (plus the check's own time).
    expect(Date.now() - stoppedAt).toBeLessThan(WATCH_INTERVAL_MS + SLACK_MS)
    expect(r.exitCode).toBe(255)
    expect(r.stderr).toMatch(/^error: Session ended: workspace dev (is stopping|stopped)\.\n$/)

    // Neither the agent nor the session's processes outlive the stop.
    await waitFor('no process left in the stopped workspace', async () => {
      return (await processesUnder(server.dataDir)).length === 0
    })
  })

  it('should fail at once for a stopped workspace', async () => {
    expect((await api.workspace('dev')).status).toBe('stopped')
    const r = await ssh(['dev', '--', 'true'])
    expect(r.exitCode).toBe(1)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(
      /^error: Workspace "?dev"? is stopped.*\(MESH_WORKSPACE_NOT_RUNNING\)\n$/,
    )
  })

  it('should wait for the agent of a starting workspace', async () => {
    // A start takes a few seconds, about as long as the CLI takes to start
    // up, so the start could win the race. A busy server makes the start
    // wait in the build queue: every build slot runs a slow build first.
    const slow = join(dirname(server.dataDir), 'slow')
    await mkdir(slow, { recursive: true })
    await writeFile(join(slow, 'main.tf'), SLOW_TEMPLATE)
    const push = await server.cli(['templates', 'push', 'slow', '-d', slow])
    expect(push.exitCode, push.stderr).toBe(0)
    const busy = await Promise.all(
      Array.from({ length: DEFAULT_MAX_CONCURRENT_BUILDS }, (_, i) =>
        api.createWorkspace({ name: `busy${i}`, template: 'slow' }),
      ),
    )
    try {
      await waitFor('every build slot to be busy', async () => {
        const builds = await Promise.all(busy.map(({ build }) => api.build(build.id)))
        return builds.every((b) => b.status === 'running')
      })

      const start = server.cli(['start', 'dev', '-y'])
      try {
        await waitFor('the start build', async () => {
          return (await api.workspace('dev')).status === 'starting'
        })
        const r = await ssh(['dev', '--', 'echo up'])
        expect(r).toEqual({ exitCode: 0, stdout: 'up\n', stderr: 'Waiting for the agent...\n' })
      } finally {
        const started = await start
        expect(started.exitCode, started.stderr).toBe(0)
      }
    } finally {
      await Promise.all(
        busy.map(async ({ workspace }) => {
          await waitFor(
            `${workspace.name} to be built`,
            async () => {
              return (await api.workspace(workspace.name)).status !== 'starting'
            },
            120_000,
          )
          const del = await server.cli(['delete', workspace.name, '-y'])
          expect(del.exitCode, del.stderr).toBe(0)
        }),
      )
    }
  }, 240_000)

  it('should end the session when the agent goes away (B06)', async () => {
    const pid = Number((await readFile(join(workspaceDir, 'agent.pid'), 'utf8')).trim())
    expect(pid).toBeGreaterThan(1)

    // An idle session: `cat` waits on stdin, which stays open.
    const session = execa(BIN, ['ssh', 'dev', '--', 'cat'], {
      env: server.env,
      extendEnv: false,
      reject: false,
      stdin: 'pipe',
      timeout: 180_000,
    })
    try {
      await waitForRemote(['cat'])
      // The agent dies at once, with no chance to say goodbye: SIGKILL to
      // its process group (agent.sh starts it as a group leader).
      process.kill(-pid, 'SIGKILL')
      const killedAt = Date.now()
      const r = await session
      expect(Date.now() - killedAt).toBeLessThan(KEEPALIVE_BOUND_MS + SLACK_MS)
      expect(r.exitCode).toBe(255)
      expect(String(r.stderr)).toMatch(/^error: Session ended: agent unreachable/)
    } finally {
      session.stdin?.destroy()
      session.kill('SIGKILL')
    }

    // With the agent gone, its session's stdin closes and cat ends too.
    await waitFor('no process left in the workspace', async () => {
      return (await processesUnder(server.dataDir)).length === 0
    })
  })
})
