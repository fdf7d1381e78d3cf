/**
 * The main job end to end on real parts: a real server, real terraform, the
 * shipped `local` template starting a real agent, and SSH over the libp2p
 * mesh from both OpenSSH and the coder-mesh CLI.
 */
import pty from '@lydell/node-pty'
import { execa } from 'execa'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { ApiClient } from '../sdk/api-client.ts'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import { dialAgent, openMeshStream } from '../netstack/dial.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode } from '../netstack/node.ts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  BIN,
  cleanEnv,
  loginOwner,
  processesUnder,
  removeTree,
  startTestServer,
  waitFor,
  type TestServer,
} from './harness.ts'

describe('workspace lifecycle over the mesh', () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
  })

  afterAll(async () => {
    if (server === undefined) return
    await server.cli(['delete', 'dev', '-y'])
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(dirname(server.dataDir))
  })

  it('should push the shipped local template without -d', async () => {
    const r = await server.cli(['templates', 'push', 'local'])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toMatch(/version 1/)

    const list = await server.cli(['templates', 'list', '-o', 'json'])
    expect(JSON.parse(list.stdout)).toEqual([
      expect.objectContaining({ name: 'local', activeVersion: 1 }),
    ])
  })

  it('should create a workspace with real terraform and stream its build log', async () => {
    const r = await server.cli(['create', 'dev', '--template', 'local', '-y'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/Apply complete!/)

    const show = await server.cli(['show', 'dev', '-o', 'json'])
    expect(JSON.parse(show.stdout)).toMatchObject({ name: 'dev', status: 'running' })
  })

  it('should run commands through OpenSSH with the CLI as ProxyCommand', async () => {
    const r = await server.ssh('dev', 'echo $((6*7))')
    expect(r.stderr).toBe('')
    expect(r.stdout.trim()).toBe('42')
    expect(r.exitCode).toBe(0)

    const seven = await server.ssh('dev', 'exit 7')
    expect(seven.exitCode).toBe(7)
  })

  it('should reach the workspace as coder-mesh.dev after config-ssh, keeping user entries', async () => {
    const file = join(server.home, '.ssh', 'config')
    await mkdir(dirname(file), { recursive: true, mode: 0o700 })
    const mine = 'Host mine\n  HostName keep-me.example.test\n'
    await writeFile(file, mine)

    const r = await server.cli(['config-ssh', '-y'])
    expect(r.exitCode).toBe(0)
    expect(r.stderr).toContain('coder-mesh.dev')
    // This HOME is not the account's home, which is where OpenSSH looks for
    // ~/.ssh/config: the hint names the file it must be given.
    expect(r.stderr).toContain(`Try: ssh -F ${file} coder-mesh.dev`)
    const written = await readFile(file, 'utf8')
    expect(written.startsWith(mine)).toBe(true)

    const ssh = await execa('ssh', ['-F', file, 'coder-mesh.dev', 'echo via-config'], {
      env: server.env,
      extendEnv: false,
      reject: false,
      timeout: 60_000,
    })
    expect(ssh.stderr).toBe('')
    expect(ssh.stdout.trim()).toBe('via-config')

    const again = await server.cli(['config-ssh', '-y'])
    expect(again.stderr).toContain('already up to date')
    expect(await readFile(file, 'utf8')).toBe(written)
  })

  it('should run commands through coder-mesh ssh with the remote exit status', async () => {
    const r = await server.cli(['ssh', 'dev', '--', 'echo $((6*7))'])
    expect(r.stdout.trim()).toBe('42')
    expect(r.exitCode).toBe(0)

    const seven = await server.cli(['ssh', 'dev', '--', 'exit 7'])
    expect(seven.exitCode).toBe(7)
    expect(seven.stderr).toBe('')

    const stdin = await server.cli(['ssh', 'dev', '--', 'wc -l'], { input: 'a\nb\nc\n' })
    expect(stdin.stdout.trim()).toBe('3')

    const split = await server.cli(['ssh', 'dev', '--', 'echo out; echo err >&2'])
    expect(split.stdout.trim()).toBe('out')
    expect(split.stderr.trim()).toBe('err')
  })

  it('should end ssh --stdio when its input ends, as a ProxyCommand whose ssh died', async () => {
    const r = await server.cli(['ssh', '--stdio', 'coder-mesh.dev'], { timeout: 30_000 })
    expect(r.exitCode, r.stderr).toBe(0)
    // Nearly always the agent's version line comes first. About 1 run in 50
    // the agent's stream closes before ssh2 wrote it (the client's EOF won a
    // race not yet found; it was 1 in 20 before the ssh2 patch): the session
    // still ends cleanly, which is what this test is about.
    expect(r.stdout).toMatch(/^(SSH-2\.0-|$)/)
  })

  it('should give an interactive coder-mesh ssh a real PTY', async () => {
    const term = pty.spawn(BIN, ['ssh', 'dev'], {
      cols: 120,
      rows: 40,
      env: cleanEnv(server.home, server.configDir),
    })
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))

    await waitFor('a prompt', async () => screen.length > 0, 30_000)
    term.write('tty; stty size\r')
    await waitFor('tty output', async () => /\/dev\/pts\/\d+/.test(screen), 15_000)
    await waitFor('stty size', async () => /40 120/.test(screen), 15_000)
    term.write('exit 3\r')
    expect(await exited).toBe(3)
  })

  it('should refuse streams with no ticket or a ticket for another workspace', async () => {
    const other = await server.cli(['create', 'other', '--template', 'local', '-y'])
    expect(other.exitCode, other.stderr).toBe(0)

    const session = JSON.parse(await readFile(join(server.configDir, 'session.json'), 'utf8'))
    const api = new ApiClient({ url: server.url, token: session.sessionToken })
    await waitFor('both agents to connect', async () => {
      const all = await api.workspaces()
      return all.length === 2 && all.every((w) => w.agent?.connected === true)
    })
    const node = await createMeshNode({ privateKey: await newPeerKey(), listen: [] })
    try {
      const peerId = node.peerId.toString()
      const forDev = await api.connect('dev', peerId)
      const forOther = await api.connect('other', peerId)
      expect(forOther.agent.peerId).not.toBe(forDev.agent.peerId)

      const conn = await dialAgent(node, { ...forOther.agent, relays: forOther.relays })
      const attempts = [forDev.ticket, 'not-a-ticket']
      for (const ticket of attempts) {
        const duplex = await openMeshStream(conn, SSH_PROTOCOL, ticket)
        const received: Buffer[] = []
        duplex.on('data', (chunk: Buffer) => received.push(chunk))
        const outcome = await new Promise<string>((resolve) => {
          duplex.on('error', () => resolve('refused'))
          duplex.on('end', () => resolve('ended'))
        })
        expect(outcome).toBe('refused')
        expect(Buffer.concat(received).length).toBe(0)
      }

      // The right ticket on the same connection gets the agent's SSH banner.
      const duplex = await openMeshStream(conn, SSH_PROTOCOL, forOther.ticket)
      const banner = await new Promise<string>((resolve) => {
        duplex.once('data', (chunk: Buffer) => resolve(chunk.toString()))
      })
      expect(banner).toMatch(/^SSH-2\.0-/)
      duplex.destroy()
    } finally {
      await node.stop()
    }

    const del = await server.cli(['delete', 'other', '-y'])
    expect(del.exitCode, del.stderr).toBe(0)
  })

  it('should work again after stop and start', async () => {
    const stop = await server.cli(['stop', 'dev', '-y'])
    expect(stop.exitCode, stop.stderr).toBe(0)
    const stopped = await server.cli(['show', 'dev', '-o', 'json'])
    expect(JSON.parse(stopped.stdout)).toMatchObject({ status: 'stopped' })
    await waitFor('the agent to exit', async () => {
      return (await processesUnder(server.dataDir)).length === 0
    })

    const start = await server.cli(['start', 'dev', '-y'])
    expect(start.exitCode, start.stderr).toBe(0)
    const r = await server.ssh('dev', 'echo again')
    expect(r.stdout.trim()).toBe('again')
  })

  it('should leave no agent process after delete', async () => {
    expect((await processesUnder(server.dataDir)).length).toBeGreaterThan(0)
    const r = await server.cli(['delete', 'dev', '-y'])
    expect(r.exitCode, r.stderr).toBe(0)
    await waitFor('no agent left', async () => (await processesUnder(server.dataDir)).length === 0)

    const gone = await server.cli(['show', 'dev'])
    expect(gone.exitCode).not.toBe(0)
    expect(gone.stderr.trim().split('\n')).toHaveLength(1)
    expect(gone.stderr).toMatch(/MESH_WORKSPACE_NOT_FOUND/)
  })
})
