/**
 * The agent's SSH server as OpenSSH's ssh sees it, through the mesh with the
 * CLI as ProxyCommand: exec, terminals and resizes, port forwarding both
 * ways, agent forwarding, and hang-up when the client goes away. One real
 * server and workspace for the whole file.
 */
import pty from '@lydell/node-pty'
import { execa, type ResultPromise } from 'execa'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { removeTree, startWorkspaceFixture, waitFor, type WorkspaceFixture } from './harness.ts'

/** Pids of processes whose command line is exactly `cmdline` (words joined by spaces). */
function processesRunning(cmdline: string): number[] {
  const found: number[] = []
  for (const entry of readdirSafe('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim()
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      if (cmd === cmdline && !stat.includes(') Z ')) found.push(Number(entry))
    } catch {
      // Gone while we looked.
    }
  }
  return found
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch {
    return []
  }
}

/** Local addresses of IPv4 TCP listeners on `port`, from /proc/net/tcp. */
function listenersOn(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0')
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f[1]?.endsWith(`:${hexPort}`) && f[3] === '0A')
    .map((f) => {
      const hex = f[1]!.split(':')[0]!
      return [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join('.')
    })
}

/** An HTTP server on loopback answering every request with `hello <path>`. */
async function helloServer(): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' })
    res.end(`hello ${req.url}`)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, port: (server.address() as AddressInfo).port }
}

/** A TCP port free right now on loopback. */
async function freePort(): Promise<number> {
  const { server, port } = await helloServer()
  await new Promise((r) => server.close(r))
  return port
}

describe('OpenSSH against the agent', () => {
  let ws: WorkspaceFixture
  let ssh: (
    args: string[],
    options?: Parameters<WorkspaceFixture['tool']>[2],
  ) => ReturnType<WorkspaceFixture['tool']>
  const background: ResultPromise[] = []

  beforeAll(async () => {
    ws = await startWorkspaceFixture('sshd')
    ssh = (args, options) => ws.tool('ssh', ['-F', ws.sshConfig, ...args], options)
  })

  afterAll(async () => {
    for (const child of background) child.kill('SIGKILL')
    await ws?.close()
  })

  it('should deliver stdin and its EOF: printf hi | ssh HOST cat', async () => {
    const r = await ssh([ws.host, 'cat'], { input: 'hi', timeout: 30_000 })
    expect(r.stdout).toBe('hi')
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
  })

  it('should keep stderr apart and pass exit codes', async () => {
    const r = await ssh([ws.host, 'echo out; echo err >&2; exit 3'])
    expect(r.stdout).toBe('out')
    expect(r.stderr).toBe('err')
    expect(r.exitCode).toBe(3)
  })

  it('should report a death by signal as sshd does: exit-signal, and ssh exits 255', async () => {
    // OpenSSH's ssh takes its status only from exit-status (clientloop.c):
    // after an exit-signal it has none, and exits 255, as with sshd.
    const r = await ssh(['-v', ws.host, 'kill -TERM $$'])
    expect(r.exitCode).toBe(255)
    expect(r.stderr).toMatch(/rtype exit-signal/)
    expect(r.stderr).not.toMatch(/rtype exit-status/)
  })

  it('should take a command as long as sshd takes (a 40 kB one)', async () => {
    const long = 'a'.repeat(40_000)
    const r = await ssh([ws.host, `echo ${long} | wc -c`], { timeout: 60_000 })
    expect(r.stderr).toBe('')
    expect(r.stdout.trim()).toBe('40001')
    expect(r.exitCode).toBe(0)
  })

  it('should stop the remote command when the local reader goes: ssh HOST yes | head -1', async () => {
    const pipeline = `ssh -F '${ws.sshConfig}' ${ws.host} 'yes coder-mesh-eow' </dev/null | head -1`
    const r = await ws.tool('sh', ['-c', pipeline], { timeout: 60_000 })
    expect(r.stdout).toBe('coder-mesh-eow')
    expect(r.exitCode).toBe(0)
    const gone = async (): Promise<boolean> => processesRunning('yes coder-mesh-eow').length === 0
    await waitFor('the remote yes to end', gone, 20_000)
  })

  it('should take many connections at once, as editors and scripts open them', async () => {
    const runs = await Promise.all(
      Array.from({ length: 24 }, (_, i) => ssh([ws.host, `echo s${i}`], { timeout: 120_000 })),
    )
    runs.forEach((r, i) => {
      expect(r.stderr, `connection ${i}`).toBe('')
      expect(r.stdout).toBe(`s${i}`)
    })
  })

  it('should bring a large output complete and in order, stdout and stderr apart', async () => {
    const r = await ssh([ws.host, 'seq 1 200000; seq 1 50000 >&2'])
    const want = (n: number): string =>
      Array.from({ length: n }, (_, i) => String(i + 1)).join('\n')
    expect(r.stdout).toBe(want(200000))
    expect(r.stderr).toBe(want(50000))
    expect(r.exitCode).toBe(0)
  })

  it('should give ssh -tt the terminal size, TERM and resizes of its own terminal', async () => {
    const term = pty.spawn(
      'ssh',
      [
        '-F',
        ws.sshConfig,
        '-tt',
        ws.host,
        'echo "size=$(stty size) term=$TERM"; ' +
          'trap \'echo "resized=$(stty size)"\' WINCH; ' +
          'echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done',
      ],
      {
        cols: 97,
        rows: 31,
        name: 'screen-256color',
        env: { ...ws.server.env, TERM: 'screen-256color' },
      },
    )
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
    try {
      await waitFor('ready', async () => screen.includes('ready'), 30_000)
      expect(screen).toContain('size=31 97 term=screen-256color')
      term.resize(120, 40)
      await waitFor('the resize', async () => screen.includes('resized=40 120'), 15_000)
    } finally {
      term.kill('SIGKILL')
      await exited
    }
  })

  it('should show the message of the day on an interactive login', async () => {
    const motd = existsSync('/etc/motd') ? readFileSync('/etc/motd', 'utf8').trim() : ''
    const firstLine = motd.split('\n').find((l) => l.trim() !== '')
    const term = pty.spawn('ssh', ['-F', ws.sshConfig, '-tt', ws.host], {
      cols: 100,
      rows: 30,
      env: ws.server.env,
    })
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
    term.write('echo "shell=$0"; exit 4\r')
    expect(await exited).toBe(4)
    // A login shell: $0 starts with '-' or the shell ran with -l.
    expect(screen).toMatch(/shell=\S+/)
    if (firstLine !== undefined) expect(screen).toContain(firstLine.trim())
  })

  it('should carry an HTTP request and its answer through ssh -L', async () => {
    const { server, port } = await helloServer()
    const local = await freePort()
    const child = execa(
      'ssh',
      [
        '-F',
        ws.sshConfig,
        '-N',
        '-o',
        'ExitOnForwardFailure=yes',
        '-L',
        `${local}:127.0.0.1:${port}`,
        ws.host,
      ],
      { env: ws.server.env, extendEnv: false, reject: false },
    )
    background.push(child)
    try {
      let body = ''
      await waitFor(
        'the local forward',
        async () => {
          body = await fetch(`http://127.0.0.1:${local}/via-L`)
            .then((r) => r.text())
            .catch(() => '')
          return body !== ''
        },
        30_000,
      )
      expect(body).toBe('hello /via-L')
    } finally {
      child.kill('SIGTERM')
      await child
      server.close()
    }
  })

  it('should carry an HTTP request and its answer through ssh -R, on loopback only', async () => {
    const { server, port } = await helloServer()
    const child = execa(
      'ssh',
      [
        '-F',
        ws.sshConfig,
        '-N',
        '-o',
        'ExitOnForwardFailure=yes',
        // INFO: ssh says which port the agent allocated.
        '-o',
        'LogLevel=INFO',
        '-R',
        `0:127.0.0.1:${port}`,
        ws.host,
      ],
      { env: { ...ws.server.env }, extendEnv: false, reject: false, buffer: false },
    )
    background.push(child)
    try {
      // ssh prints the port the agent chose: "Allocated port N for remote forward to ...".
      let errText = ''
      child.stderr?.on('data', (d: Buffer) => {
        errText += d.toString()
      })
      await waitFor('the allocated port', async () => /Allocated port \d+/.test(errText), 30_000)
      const remotePort = Number(/Allocated port (\d+)/.exec(errText)![1])

      // From inside the workspace, to the port on its loopback.
      const r = await ssh([ws.host, `curl -s http://127.0.0.1:${remotePort}/via-R`])
      expect(r.stdout).toBe('hello /via-R')
      // Bound to loopback only (sshd's GatewayPorts no); the workspace is this machine.
      expect(listenersOn(remotePort)).toEqual(['127.0.0.1'])

      // The listener goes with the connection.
      child.kill('SIGTERM')
      await child
      await waitFor(
        'the remote listener to close',
        async () =>
          (await fetch(`http://127.0.0.1:${remotePort}/`).then(
            () => false,
            () => true,
          )) === true,
        15_000,
      )
    } finally {
      child.kill('SIGKILL')
      server.close()
    }
  })

  it('should forward the client agent with ssh -A, on a private socket removed after', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-agent-fwd-'))
    const sock = join(dir, 'agent.sock')
    const agent = execa('ssh-agent', ['-D', '-a', sock], { reject: false, stdio: 'ignore' })
    background.push(agent)
    try {
      await waitFor('ssh-agent', async () => existsSync(sock), 10_000)
      const key = join(dir, 'id_ed25519')
      const gen = await execa('ssh-keygen', [
        '-q',
        '-t',
        'ed25519',
        '-N',
        '',
        '-C',
        'mesh-test-key',
        '-f',
        key,
      ])
      expect(gen.exitCode).toBe(0)
      const env = { SSH_AUTH_SOCK: sock }
      const add = await ws.tool('ssh-add', [key], { env })
      expect(add.exitCode, add.stderr).toBe(0)

      const r = await ssh(
        [
          '-A',
          ws.host,
          'ssh-add -l; echo "sock=$SSH_AUTH_SOCK"; stat -c %a "$(dirname "$SSH_AUTH_SOCK")"',
        ],
        { env },
      )
      expect(r.stderr).toBe('')
      expect(r.stdout).toMatch(/ED25519/)
      expect(r.stdout).toContain('mesh-test-key')
      expect(r.stdout).toMatch(/\n700$/)
      const remoteSock = /sock=(\S+)/.exec(r.stdout)![1]!
      await waitFor(
        'the socket folder to go',
        async () => !existsSync(join(remoteSock, '..')),
        10_000,
      )

      // Without -A the session has no agent.
      const none = await ssh([ws.host, 'echo "sock=${SSH_AUTH_SOCK:-none}"'], { env })
      expect(none.stdout).toBe('sock=none')
    } finally {
      agent.kill('SIGTERM')
      await agent
      await removeTree(dir)
    }
  })

  it('should refuse X11 forwarding and say so, and still run the command', async () => {
    // Any DISPLAY makes ssh ask; without xauth it sends a made-up cookie.
    const r = await ssh(['-Y', ws.host, 'echo ran'], { env: { DISPLAY: ':99' } })
    expect(r.stdout).toBe('ran')
    expect(r.stderr).toMatch(/X11 forwarding is not supported/)
    expect(r.exitCode).toBe(0)
  })

  it('should end a long sleep started in the session when the client is killed', async () => {
    const duration = `${800 + Math.floor(Math.random() * 99)}.${Date.now() % 10000}`
    const child = execa('ssh', ['-F', ws.sshConfig, ws.host, `sleep ${duration}`], {
      env: ws.server.env,
      extendEnv: false,
      reject: false,
    })
    background.push(child)
    await waitFor(
      'the sleep',
      async () => processesRunning(`sleep ${duration}`).length === 1,
      30_000,
    )
    child.kill('SIGKILL')
    await child
    await waitFor(
      'the sleep to end',
      async () => processesRunning(`sleep ${duration}`).length === 0,
      15_000,
    )
  })
})
