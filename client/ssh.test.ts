/**
 * `coder-mesh ssh` over a real libp2p mesh to a minimal ssh2 agent, with a
 * fake coordinator handing out real tickets: stdin EOF (B01), exit statuses
 * and signals (B02), full output (B04), sessions that end when the
 * workspace stops or the agent goes away (B06), and `--stdio` under OpenSSH.
 */
import pty from '@lydell/node-pty'
import { execa } from 'execa'
import { rm } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MeshError } from '../sdk/errors.ts'
import { startFakeCoordinator, type FakeCoordinator } from './testing/fake-coordinator.ts'
import { startMiniAgent, type MiniAgent } from './testing/mini-agent.ts'
import { BIN, cliEnv, runCli, type CliEnv } from './testing/run-cli.ts'

describe('coder-mesh ssh', () => {
  let fake: FakeCoordinator
  let agent: MiniAgent
  let cli: CliEnv

  beforeAll(async () => {
    fake = await startFakeCoordinator()
    agent = await startMiniAgent()
    fake.addWorkspace('dev')
    fake.onConnect = (workspace, peerId) => agent.connectResponse(peerId, workspace.name)
    cli = await cliEnv({ CODER_MESH_URL: fake.url, CODER_MESH_SESSION_TOKEN: fake.token })
  })

  afterAll(async () => {
    await agent?.stop()
    await fake?.close()
    if (cli !== undefined) await rm(cli.home, { recursive: true, force: true })
  })

  const ssh = (args: string[], input?: string | Buffer) =>
    runCli(cli.env, ['ssh', ...args], { input, timeout: 30_000 })

  it('should run a command and print its output', async () => {
    const r = await ssh(['dev', '--', 'echo $((6*7)); echo err >&2'])
    expect(r).toEqual({ exitCode: 0, stdout: '42\n', stderr: 'err\n' })
  })

  it('should deliver stdin and its EOF to the command (B01)', async () => {
    const r = await ssh(['dev', '--', 'wc', '-l'], 'a\nb\nc\n')
    expect(r.stdout.trim()).toBe('3')
    expect(r.exitCode).toBe(0)

    const started = Date.now()
    const empty = await ssh(['coder-mesh.dev', '--', 'cat'])
    expect(empty).toEqual({ exitCode: 0, stdout: '', stderr: '' })
    expect(Date.now() - started).toBeLessThan(10_000)
  })

  it('should exit with the remote status and print nothing extra (B02)', async () => {
    for (const code of [0, 1, 2, 7, 127, 255]) {
      const r = await ssh(['dev', '--', `exit ${code}`])
      expect(r.exitCode, `exit ${code}`).toBe(code)
      expect(r.stderr).toBe('')
    }
    expect((await ssh(['dev', '--', 'exit 256'])).exitCode).toBe(0)
    expect((await ssh(['dev', '--', 'nosuchcommand'])).exitCode).toBe(127)
  })

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
    const r = await execa(
      'ssh',
      [
        '-F',
        '/dev/null',
        '-o',
        `ProxyCommand='${BIN}' ssh --stdio %h`,
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'LogLevel=ERROR',
        '-o',
        'BatchMode=yes',
        '-o',
        'PreferredAuthentications=none,publickey',
        'coder-mesh.dev',
        'wc -l; exit 7',
      ],
      { env: cli.env, extendEnv: false, reject: false, input: 'a\nb\nc\n', timeout: 30_000 },
    )
    expect(r.stdout.trim()).toBe('3')
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(7)
  })

  it('should refuse --stdio with a command', async () => {
    const r = await ssh(['--stdio', 'dev', '--', 'ls'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toMatch(/MESH_BAD_ARGUMENT/)
  })

  it('should wait for the agent of a starting workspace', async () => {
    const workspace = fake.addWorkspace('late', 'starting')
    let refusals = 0
    const previous = fake.onConnect
    fake.onConnect = (w, peerId) => {
      if (w.name === 'late' && refusals++ < 2) {
        throw new MeshError('MESH_AGENT_NOT_CONNECTED', 'The agent has not connected yet.')
      }
      workspace.status = 'running'
      return previous(w, peerId)
    }
    try {
      const r = await ssh(['late', '--', 'echo up'])
      expect(r).toEqual({ exitCode: 0, stdout: 'up\n', stderr: 'Waiting for the agent...\n' })
    } finally {
      fake.onConnect = previous
    }
  })

  it('should fail at once for a stopped workspace', async () => {
    fake.addWorkspace('cold', 'stopped')
    const previous = fake.onConnect
    fake.onConnect = () => {
      throw new MeshError('MESH_WORKSPACE_NOT_RUNNING', 'Workspace cold is not running.')
    }
    try {
      const r = await ssh(['cold', '--', 'true'])
      expect(r.exitCode).toBe(1)
      expect(r.stderr).toBe('error: Workspace cold is not running. (MESH_WORKSPACE_NOT_RUNNING)\n')
    } finally {
      fake.onConnect = previous
    }
  })

  it('should end an idle session when the workspace stops (B06)', async () => {
    const workspace = fake.addWorkspace('idle')
    const session = ssh(['idle', '--', 'sleep 120'])
    await new Promise((r) => setTimeout(r, 2000))
    const stoppedAt = Date.now()
    workspace.status = 'stopped'
    const r = await session
    expect(Date.now() - stoppedAt).toBeLessThan(30_000)
    expect(r.exitCode).toBe(255)
    expect(r.stderr).toBe('error: Session ended: workspace idle stopped.\n')
  })

  it('should give an interactive session a PTY, its size and its exit status', async () => {
    const term = pty.spawn(BIN, ['ssh', 'dev'], { cols: 100, rows: 30, env: cli.env })
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    screenOf = () => screen
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
    await waitFor(() => screen.includes('$ '))
    term.write('tty; stty size\r')
    await waitFor(() => /\/dev\/pts\/\d+/.test(screen) && /30 100/.test(screen))
    // The new size travels as SIGWINCH -> window-change -> the remote PTY;
    // ask until it has arrived.
    term.resize(120, 40)
    for (let i = 0; i < 20 && !/40 120/.test(screen); i++) {
      term.write('stty size\r')
      await new Promise((r) => setTimeout(r, 500))
    }
    expect(screen).toMatch(/40 120/)
    term.write('exit 3\r')
    expect(await exited).toBe(3)
  })

  it('should end an interactive session at once on Enter ~ .', async () => {
    const term = pty.spawn(BIN, ['ssh', 'dev'], { cols: 80, rows: 24, env: cli.env })
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    screenOf = () => screen
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
    await waitFor(() => screen.includes('$ '))
    term.write('echo a~b\r')
    await waitFor(() => /a~b\r+\n/.test(screen))
    term.write('~.')
    expect(await exited).toBe(255)
    expect(screen).toMatch(/Connection to dev closed/)
  })

  it('should end the session when the agent goes away (B06)', async () => {
    const session = ssh(['dev', '--', 'sleep 120'])
    await new Promise((r) => setTimeout(r, 2000))
    await agent.stop()
    const r = await session
    expect(r.exitCode).toBe(255)
    expect(r.stderr).toMatch(/^error: Session ended: agent unreachable/)
  })
})

let screenOf: (() => string) | undefined
async function waitFor(check: () => boolean, timeout = 15_000): Promise<void> {
  const deadline = Date.now() + timeout
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out; screen: ${JSON.stringify(screenOf?.())}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}
