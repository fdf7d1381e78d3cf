import { generateKeyPair } from '@libp2p/crypto/keys'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { toDuplex } from '../netstack/stream-duplex.ts'
import { newTicketKeyPair } from '../netstack/ticket.ts'
import { isMeshError } from '../sdk/errors.ts'
import { createLogger } from '../sdk/logger.ts'
import { directAddrs, startAgent, type RunningAgent } from './index.ts'
import {
  connectSsh,
  openSshStream,
  processesMatching,
  run,
  shell,
  startFakeCoordinator,
  waitFor,
  type FakeCoordinator,
  type MeshSshClient,
} from './testing.ts'

const log = createLogger('mesh:test', 'silent')
const LOOPBACK = ['/ip4/127.0.0.1/tcp/0']

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'coder-mesh-agent-'))
}

function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () => resolve(Buffer.concat(chunks)))
    stream.on('close', () => resolve(Buffer.concat(chunks)))
    stream.on('error', () => resolve(Buffer.concat(chunks)))
  })
}

/** Processes running exactly `sleep <duration>`. */
function sleeping(duration: string): number[] {
  return processesMatching(`sleep ${duration}`, true)
}

/** A unique sleep duration, so a process listing finds only this test's sleeps. */
function uniqueSleep(): string {
  return `${900 + Math.floor(Math.random() * 99)}.${Date.now() % 100000}${Math.floor(Math.random() * 10)}`
}

describe('agent over the mesh', () => {
  let coordinator: FakeCoordinator
  let dir: string
  let agent: RunningAgent
  let addrs: string[]
  let client: MeshSshClient

  beforeAll(async () => {
    coordinator = await startFakeCoordinator()
    dir = await tempDir()
    agent = await startAgent({
      url: coordinator.url,
      token: coordinator.token,
      dir,
      listen: LOOPBACK,
      log,
    })
    const registered = await coordinator.waitForRegistration(0, (r) => r.addrs.length > 0)
    addrs = registered.addrs
    client = await connectSsh({ coordinator, agentPeerId: agent.peerId, addrs })
  })

  afterAll(async () => {
    await client?.close()
    await agent?.stop()
    await coordinator?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('should register its direct addresses from the first registration on', () => {
    const [first, second] = coordinator.registrations
    expect(first!.version).toMatch(/^\d+\.\d+\.\d+/)
    for (const registration of [first!, second!]) {
      expect(registration.peerId).toBe(agent.peerId)
      expect(registration.addrs.length).toBeGreaterThan(0)
      for (const addr of registration.addrs) {
        expect(addr).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+$/)
      }
    }
  })

  it('should keep its key and host key private in its folder', async () => {
    expect((await stat(join(dir, 'agent-key'))).mode & 0o077).toBe(0)
    expect((await stat(join(dir, 'ssh_host_ed25519_key'))).mode & 0o077).toBe(0)
    expect(await readFile(join(dir, 'ssh_host_ed25519_key'), 'utf8')).toContain(
      'BEGIN OPENSSH PRIVATE KEY',
    )
  })

  it('should run a command and return its output and exit code 0', async () => {
    const result = await run(client.ssh, 'echo $((6*7))')
    expect(result.stdout.toString()).toBe('42\n')
    expect(result.stderr.toString()).toBe('')
    expect(result.code).toBe(0)
  })

  it('should pass exit codes 0-255 through unchanged (B02)', async () => {
    for (const code of [1, 2, 7, 127, 255]) {
      expect((await run(client.ssh, `exit ${code}`)).code).toBe(code)
    }
    expect((await run(client.ssh, 'exit 256')).code).toBe(0)
    expect((await run(client.ssh, 'nosuchcommand-coder-mesh')).code).toBe(127)
  })

  it('should report a death by signal as exit-signal with the bare name (B02)', async () => {
    const term = await run(client.ssh, 'kill -TERM $$')
    expect(term.code).toBeNull()
    expect(term.signal).toBe('SIGTERM')
    const kill = await run(client.ssh, 'kill -KILL $$')
    expect(kill.signal).toBe('SIGKILL')
  })

  it('should keep stdout and stderr apart', async () => {
    const result = await run(client.ssh, 'echo out; echo err >&2; echo out2')
    expect(result.stdout.toString()).toBe('out\nout2\n')
    expect(result.stderr.toString()).toBe('err\n')
  })

  it('should deliver stdin and its EOF to the command (B01)', async () => {
    const result = await run(client.ssh, 'wc -l', { stdin: 'a\nb\nc\n' })
    expect(result.stdout.toString().trim()).toBe('3')
    expect(result.code).toBe(0)

    const empty = await run(client.ssh, 'cat')
    expect(empty.stdout.length).toBe(0)
    expect(empty.code).toBe(0)
  })

  it('should carry binary stdin intact', async () => {
    const payload = randomBytes(3 * 1024 * 1024)
    const result = await run(client.ssh, 'md5sum | cut -c1-32', { stdin: payload })
    expect(result.stdout.toString().trim()).toBe(createHash('md5').update(payload).digest('hex'))
    const count = await run(client.ssh, 'wc -c', { stdin: payload })
    expect(count.stdout.toString().trim()).toBe(String(payload.length))
  })

  it('should send all output before the exit status on a fast, large exit (B04)', async () => {
    const command = 'yes abcdefg | head -c 5000000; yes err | head -c 100000 >&2; exit 3'
    for (let i = 0; i < 3; i++) {
      const result = await run(client.ssh, command)
      expect(result.stdout.length).toBe(5_000_000)
      expect(result.stderr.length).toBe(100_000)
      expect(result.code).toBe(3)
      expect(result.exitBeforeClose).toBe(true)
      expect(result.stdoutAtExit).toBe(5_000_000)
      expect(result.stderrAtExit).toBe(100_000)
    }
  })

  it('should keep interleaved stdout and stderr complete under window pressure (B04)', async () => {
    const command =
      'for i in $(seq 1 40); do head -c 65536 /dev/zero; head -c 50000 /dev/zero >&2; done; exit 4'
    const result = await run(client.ssh, command)
    expect(result.stdout.length).toBe(40 * 65536)
    expect(result.stderr.length).toBe(40 * 50000)
    expect(result.code).toBe(4)
    expect(result.stdoutAtExit).toBe(40 * 65536)
  })

  it('should lose or repeat nothing when a slow reader fills the SSH window (B04)', async () => {
    // stdout, then stderr, each larger than the 2 MiB window; the client
    // stops reading each for a while, so both wait for window on the agent.
    const command = 'head -c 6000000 /dev/zero; head -c 6000000 /dev/zero | tr "\\0" e >&2; exit 2'
    const result = await run(client.ssh, command, {
      onChannel: (channel) => {
        channel.pause()
        setTimeout(() => channel.resume(), 400)
        channel.stderr.once('data', () => {
          channel.stderr.pause()
          setTimeout(() => channel.stderr.resume(), 400)
        })
      },
    })
    expect(result.stdout.length).toBe(6_000_000)
    expect(result.stdout.every((b) => b === 0)).toBe(true)
    expect(result.stderr.length).toBe(6_000_000)
    expect(result.stderr.every((b) => b === 0x65)).toBe(true)
    expect(result.code).toBe(2)
  })

  it('should finish when stdout and stderr both wait for window at once (B04)', async () => {
    const command = 'yes o | head -c 6000000 & yes e | head -c 6000000 >&2; wait; exit 9'
    const result = await run(client.ssh, command, {
      onChannel: (channel) => {
        channel.pause()
        channel.stderr.pause()
        setTimeout(() => {
          channel.resume()
          channel.stderr.resume()
        }, 400)
      },
    })
    expect(result.stdout.length).toBe(6_000_000)
    expect(result.stderr.length).toBe(6_000_000)
    expect(result.stdout.toString('latin1').replaceAll('o\n', '')).toBe('')
    expect(result.stderr.toString('latin1').replaceAll('e\n', '')).toBe('')
    expect(result.code).toBe(9)
  })

  it('should keep every one of many parallel sessions complete (B04)', async () => {
    const runs = Array.from({ length: 20 }, () =>
      run(client.ssh, 'yes x | head -c 1000000; exit 5'),
    )
    for (const result of await Promise.all(runs)) {
      expect(result.stdout.length).toBe(1_000_000)
      expect(result.code).toBe(5)
      expect(result.stdoutAtExit).toBe(1_000_000)
    }
  })

  it('should run without a PTY unless one is asked for', async () => {
    const plain = await run(client.ssh, 'tty')
    expect(plain.stdout.toString()).toBe('not a tty\n')
    expect(plain.code).toBe(1)

    const withPty = await run(client.ssh, 'tty; echo "term=$TERM"', {
      pty: { term: 'vt220', cols: 90, rows: 30 },
    })
    expect(withPty.stdout.toString()).toMatch(/\/dev\/pts\/\d+/)
    expect(withPty.stdout.toString()).toContain('term=vt220')
    expect(withPty.code).toBe(0)
  })

  it('should give a shell a real PTY and return its exit status', async () => {
    const result = await shell(
      client.ssh,
      { term: 'xterm', cols: 80, rows: 24 },
      {
        onChannel: (channel) => channel.write('tty; stty size; exit 3\n'),
      },
    )
    const text = result.stdout.toString()
    expect(text).toMatch(/\/dev\/pts\/\d+/)
    expect(text).toContain('24 80')
    expect(result.code).toBe(3)
  })

  it('should resize the PTY on window-change and ignore junk sizes', async () => {
    const result = await shell(
      client.ssh,
      { term: 'xterm', cols: 80, rows: 24 },
      {
        onChannel: (channel) => {
          channel.setWindow(40, 100, 0, 0)
          channel.setWindow(0, 5000, 0, 0)
          // Rows 0 is clamped to 1, cols 5000 to 1000.
          setTimeout(() => channel.write('stty size; exit 0\n'), 300)
        },
      },
    )
    expect(result.stdout.toString()).toContain('1 1000')
    expect(result.code).toBe(0)
  })

  it('should run a shell without a PTY on pipes', async () => {
    const result = await shell(client.ssh, false, {
      onChannel: (channel) => channel.end('echo piped-$((1+1)); exit 6\n'),
    })
    expect(result.stdout.toString()).toContain('piped-2')
    expect(result.code).toBe(6)
  })

  it('should accept LANG and LC_* from the client and refuse other variables', async () => {
    const result = await run(client.ssh, 'echo "$LANG|$LC_TIME|${FOO:-unset}"', {
      env: { LANG: 'C.UTF-8', LC_TIME: 'C', FOO: 'bar' },
    })
    expect(result.stdout.toString()).toBe('C.UTF-8|C|unset\n')
  })

  it('should set HOME, USER and SHELL and keep the agent token out', async () => {
    process.env.CODER_MESH_AGENT_TOKEN = 'secret-token-value'
    try {
      const result = await run(
        client.ssh,
        'echo "$HOME|$USER|$SHELL|${CODER_MESH_AGENT_TOKEN:-none}"; pwd',
      )
      const [vars, pwd] = result.stdout.toString().trim().split('\n')
      const [home, user, sh, token] = vars!.split('|')
      expect(home).toBeTruthy()
      expect(pwd).toBe(home)
      expect(user).toBeTruthy()
      expect(sh).toMatch(/^\//)
      expect(token).toBe('none')
    } finally {
      delete process.env.CODER_MESH_AGENT_TOKEN
    }
  })

  it('should default LC_CTYPE to C.UTF-8 when no locale is set', async () => {
    const saved: Record<string, string> = {}
    for (const key of Object.keys(process.env)) {
      if (key === 'LANG' || key.startsWith('LC_')) {
        saved[key] = process.env[key]!
        delete process.env[key]
      }
    }
    try {
      const result = await run(client.ssh, 'echo "${LC_CTYPE:-unset}|${LANG:-unset}"')
      expect(result.stdout.toString()).toBe('C.UTF-8|unset\n')
    } finally {
      Object.assign(process.env, saved)
    }
  })

  it('should refuse subsystems other than sftp', async () => {
    await expect(
      new Promise((resolve, reject) =>
        client.ssh.subsys('no-such-subsystem', (err, ch) => (err ? reject(err) : resolve(ch))),
      ),
    ).rejects.toThrow()
    // The connection is still good.
    expect((await run(client.ssh, 'echo ok')).stdout.toString()).toBe('ok\n')
  })

  it('should end every process of a session when the client goes away', async () => {
    const other = await connectSsh({ coordinator, agentPeerId: agent.peerId, addrs })
    const [a, b, c] = [uniqueSleep(), uniqueSleep(), uniqueSleep()]
    void run(other.ssh, `sleep ${a} & sleep ${b}`, { keepStdinOpen: true }).catch(() => undefined)
    void shell(
      other.ssh,
      { term: 'xterm', cols: 80, rows: 24 },
      { onChannel: (ch) => ch.write(`sleep ${c} &\nsleep ${c}\n`) },
    ).catch(() => undefined)
    const started = await waitFor(
      () => sleeping(a).length === 1 && sleeping(b).length === 1 && sleeping(c).length === 2,
      10_000,
    )
    expect(started).toBe(true)

    await other.close()
    const gone = await waitFor(
      () => sleeping(a).length === 0 && sleeping(b).length === 0 && sleeping(c).length === 0,
      8000,
    )
    expect(gone).toBe(true)
  })

  it('should end a session process that ignores SIGHUP with SIGKILL', async () => {
    const other = await connectSsh({ coordinator, agentPeerId: agent.peerId, addrs })
    const s = uniqueSleep()
    void run(other.ssh, `trap '' HUP; sleep ${s}; true`, { keepStdinOpen: true }).catch(
      () => undefined,
    )
    expect(await waitFor(() => sleeping(s).length === 1, 10_000)).toBe(true)
    await other.close()
    expect(await waitFor(() => sleeping(s).length === 0, 8000)).toBe(true)
  })

  it('should end the session processes when only the channel is closed', async () => {
    const s = uniqueSleep()
    const finished = run(client.ssh, `sleep ${s}`, {
      keepStdinOpen: true,
      onChannel: (channel) => {
        void waitFor(() => sleeping(s).length === 1, 10_000).then(() => channel.close())
      },
    })
    await finished
    expect(await waitFor(() => sleeping(s).length === 0, 8000)).toBe(true)
  })

  it('should send nothing on a stream without a ticket', async () => {
    const stranger = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
    })
    try {
      const { multiaddr } = await import('@multiformats/multiaddr')
      const conn = await stranger.dial(multiaddr(`${addrs[0]}/p2p/${agent.peerId}`))
      const stream = await conn.newStream(SSH_PROTOCOL)
      const duplex = toDuplex(stream)
      duplex.write(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))
      const received = await readAll(duplex)
      expect(received.toString()).not.toContain('SSH-2.0')
    } finally {
      await stranger.stop()
    }
  })

  it('should send nothing on a stream with a forged ticket', async () => {
    const { node, duplex } = await openSshStream({
      coordinator,
      agentPeerId: agent.peerId,
      addrs,
      keys: newTicketKeyPair(),
    })
    try {
      duplex.write(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))
      const received = await readAll(duplex)
      expect(received.length).toBe(0)
    } finally {
      await node.stop()
    }
  })

  it('should keep its peer id and host key across a restart with the same folder', async () => {
    const restartDir = await tempDir()
    try {
      const first = await startAgent({
        url: coordinator.url,
        token: coordinator.token,
        dir: restartDir,
        listen: LOOPBACK,
        log,
      })
      const seen = coordinator.registrations.length
      const firstAddrs = (
        await coordinator.waitForRegistration(
          0,
          (r) => r.peerId === first.peerId && r.addrs.length > 0,
        )
      ).addrs
      const c1 = await connectSsh({ coordinator, agentPeerId: first.peerId, addrs: firstAddrs })
      const hostKey = c1.hostKey
      await c1.close()
      await first.stop()

      const second = await startAgent({
        url: coordinator.url,
        token: coordinator.token,
        dir: restartDir,
        listen: LOOPBACK,
        log,
      })
      try {
        expect(second.peerId).toBe(first.peerId)
        const secondAddrs = (
          await coordinator.waitForRegistration(
            seen,
            (r) => r.peerId === second.peerId && r.addrs.length > 0,
          )
        ).addrs
        const c2 = await connectSsh({ coordinator, agentPeerId: second.peerId, addrs: secondAddrs })
        expect(c2.hostKey.equals(hostKey)).toBe(true)
        expect((await run(c2.ssh, 'echo again')).stdout.toString()).toBe('again\n')
        await c2.close()
      } finally {
        await second.stop()
      }
    } finally {
      await rm(restartDir, { recursive: true, force: true })
    }
  })
})

describe('agent registration', () => {
  it('should fail at once when the coordinator refuses the token', async () => {
    const coordinator = await startFakeCoordinator({ token: 'right' })
    const dir = await tempDir()
    try {
      const err = await startAgent({ url: coordinator.url, token: 'wrong', dir, log }).catch(
        (e: unknown) => e,
      )
      expect(isMeshError(err) && err.code).toBe('MESH_UNAUTHENTICATED')
    } finally {
      await coordinator.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('should retry until an unreachable coordinator comes up', async () => {
    // Find a free port, then leave it closed until the agent has tried.
    const probe = await startFakeCoordinator()
    const port = probe.port
    await probe.close()
    const dir = await tempDir()
    let coordinator: FakeCoordinator | undefined
    let agent: RunningAgent | undefined
    try {
      const starting = startAgent({
        url: `http://127.0.0.1:${port}`,
        token: 'agent-token',
        dir,
        listen: LOOPBACK,
        log,
      })
      await new Promise((r) => setTimeout(r, 1500))
      coordinator = await startFakeCoordinator({ port })
      agent = await starting
      expect(coordinator.registrations.at(-1)!.peerId).toBe(agent.peerId)
    } finally {
      await agent?.stop()
      await coordinator?.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('should stop retrying when its start is aborted', async () => {
    const dir = await tempDir()
    try {
      const controller = new AbortController()
      const starting = startAgent({
        url: 'http://127.0.0.1:9',
        token: 't',
        dir,
        log,
        signal: controller.signal,
      }).catch((e: unknown) => e)
      setTimeout(() => controller.abort(), 300)
      const err = await starting
      expect((err as Error).name).toBe('AbortError')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('agent through a relay', () => {
  let relay: MeshNode
  let relayKey: Awaited<ReturnType<typeof generateKeyPair>>
  let relayAddr: string
  let coordinator: FakeCoordinator
  let agent: RunningAgent
  let dir: string

  beforeAll(async () => {
    relayKey = await generateKeyPair('Ed25519')
    relay = await createMeshNode({
      privateKey: relayKey,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      relayServer: { maxReservations: 10 },
    })
    relayAddr = relay.getMultiaddrs()[0]!.toString()
    coordinator = await startFakeCoordinator({ relays: [relayAddr], heartbeatSeconds: 1 })
    dir = await tempDir()
    agent = await startAgent({
      url: coordinator.url,
      token: coordinator.token,
      dir,
      listen: LOOPBACK,
      log,
    })
  })

  afterAll(async () => {
    await agent?.stop()
    await relay?.stop()
    await coordinator?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  async function runViaRelay(command: string): Promise<string> {
    const c = await connectSsh({
      coordinator,
      agentPeerId: agent.peerId,
      addrs: [],
      relays: [relayAddr],
    })
    try {
      const result = await run(c.ssh, command)
      const toAgent = c.node.getConnections().find((x) => x.remotePeer.toString() === agent.peerId)
      expect(toAgent?.remoteAddr.toString()).toContain('/p2p-circuit')
      return result.stdout.toString()
    } finally {
      await c.close()
    }
  }

  it('should serve SSH to a client that only has the relay', async () => {
    expect(await runViaRelay('echo relayed')).toBe('relayed\n')
  })

  it('should not register circuit addresses as its own', () => {
    for (const r of coordinator.registrations) {
      for (const a of r.addrs) expect(a).not.toContain('p2p-circuit')
    }
  })

  it('should make a new reservation after the relay restarts', async () => {
    await relay.stop()
    relay = await createMeshNode({
      privateKey: relayKey,
      listen: [relayAddr.split('/p2p/')[0]!],
      relayServer: { maxReservations: 10 },
    })
    const ok = await waitFor(() => relay.getConnections().length > 0, 20_000)
    expect(ok).toBe(true)
    // The reservation, not just the connection, must be back.
    let output = ''
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline) {
      try {
        output = await runViaRelay('echo back')
        break
      } catch {
        await new Promise((r) => setTimeout(r, 500))
      }
    }
    expect(output).toBe('back\n')
  })
})

describe('directAddrs', () => {
  it('should drop circuit addresses and the /p2p/ suffix', async () => {
    const node = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: LOOPBACK,
    })
    try {
      const addrs = directAddrs(node)
      expect(addrs.length).toBe(1)
      expect(addrs[0]).not.toContain('/p2p/')
    } finally {
      await node.stop()
    }
  })
})
