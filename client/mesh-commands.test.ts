/**
 * `coder-mesh port-forward`, `ping` and `speedtest` against the real stack:
 * a real `coder-mesh server`, one workspace of the shipped `local` template
 * (real Terraform, a real agent process on this machine), the CLI as a
 * child process. The "workspace" ports are TCP servers in this test
 * process: the agent runs on the same machine, so its loopback is ours.
 *
 * Field cases: B10 (many parallel connections, refused ports), B13 (path
 * reporting), B26 (a slow reader with bounded memory, no lost tail).
 */
import { execa, type ResultPromise } from 'execa'
import { createHash, randomBytes, randomInt } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  BIN,
  cleanEnv,
  discardTestServer,
  loginOwner,
  processesUnder,
  startTestServer,
  waitFor,
  type TestServer,
} from '../test/harness.ts'

const MiB = 1024 * 1024

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as AddressInfo).port
}

/** A port nothing listens on: bound once, then released. */
async function closedPort(): Promise<number> {
  const server = createServer()
  const port = await listen(server)
  await new Promise((resolve) => server.close(resolve))
  return port
}

/**
 * The "hash" service: on connect it sends sha256(B), a u32 length and B (B
 * random), while reading what the client sends; after the client's FIN it
 * sends sha256 of everything it read, then ends.
 */
function hashServer(): Server {
  return createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => undefined)
    const body = randomBytes(randomInt(16 * 1024, 256 * 1024))
    const head = Buffer.alloc(36)
    Buffer.from(sha256(body), 'hex').copy(head, 0)
    head.writeUInt32BE(body.length, 32)
    socket.write(head)
    socket.write(body)
    const received = createHash('sha256')
    socket.on('data', (chunk: Buffer) => received.update(chunk))
    socket.on('end', () => socket.end(received.digest()))
  })
}

/** One client of the hash service: random bytes up, half-close, check both ways. */
async function hashRound(port: number): Promise<void> {
  const payload = randomBytes(randomInt(16 * 1024, 256 * 1024))
  const socket = connect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  socket.end(payload)
  await once(socket, 'end')
  const all = Buffer.concat(chunks)
  const length = all.readUInt32BE(32)
  const body = all.subarray(36, 36 + length)
  expect(all.length).toBe(36 + length + 32)
  expect(sha256(body)).toBe(all.subarray(0, 32).toString('hex'))
  expect(all.subarray(36 + length).toString('hex')).toBe(sha256(payload))
  socket.destroy()
}

/** Resident memory of a process, in MiB (Linux /proc). */
async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1] ?? NaN) / 1024
}

interface Forward {
  child: ResultPromise
  /** The local ports, in the order of the --tcp flags. */
  ports: number[]
  stdout(): string
  stderr(): string
  /** SIGINT, then the exit code. */
  stop(): Promise<number>
}

describe('coder-mesh port-forward, ping and speedtest', () => {
  let server: TestServer
  let env: Record<string, string>
  let hash: Server
  let hashPort: number
  const forwards: Forward[] = []

  beforeAll(async () => {
    server = await startTestServer()
    env = cleanEnv(server.home, server.configDir)
    await loginOwner(server)
    const push = await server.cli(['templates', 'push', 'local'])
    if (push.exitCode !== 0) throw new Error(`push failed: ${push.stderr}`)
    const create = await server.cli(['create', 'dev', '--template', 'local', '-y'])
    if (create.exitCode !== 0) throw new Error(`create failed: ${create.stdout}${create.stderr}`)
    hash = hashServer()
    hashPort = await listen(hash)
  }, 180_000)

  afterAll(async () => {
    for (const forward of forwards) forward.child.kill('SIGKILL')
    hash?.close()
    await discardTestServer(server, ['dev'])
  })

  /** Starts `coder-mesh port-forward dev` with one --tcp per spec; resolves once it listens. */
  async function startForward(specs: string[], extra: string[] = []): Promise<Forward> {
    const args = ['port-forward', 'dev', ...specs.flatMap((s) => ['--tcp', s]), ...extra]
    const child = execa(BIN, args, {
      env,
      extendEnv: false,
      reject: false,
      buffer: false,
      stdin: 'ignore',
    })
    let out = ''
    let err = ''
    child.stdout?.on('data', (c: Buffer) => (out += c.toString()))
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()))
    const forward: Forward = {
      child,
      ports: [],
      stdout: () => out,
      stderr: () => err,
      async stop() {
        child.kill('SIGINT')
        return (await child).exitCode ?? -1
      },
    }
    forwards.push(forward)
    await waitFor(
      `port-forward to listen (stderr: ${err})`,
      async () => [...out.matchAll(/^Forwarding /gm)].length === specs.length,
      60_000,
    )
    forward.ports = [...out.matchAll(/^Forwarding 127\.0\.0\.1:(\d+) -> dev:\d+$/gm)].map((m) =>
      Number(m[1]),
    )
    return forward
  }

  async function agentPid(): Promise<number> {
    for (const pid of await processesUnder(server.dataDir)) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
      // The agent runs from the bundle (dist/main.js) or, when stale, the sources.
      if (/main\.[jt]s\0agent/.test(cmdline)) return pid
    }
    throw new Error('no agent process')
  }

  it('should print one line per --tcp and exit 0 on SIGINT', async () => {
    const remote = await closedPort()
    const forward = await startForward([`0:${hashPort}`, `0:${remote}`])
    expect(forward.stdout()).toMatch(
      new RegExp(
        `^Forwarding 127\\.0\\.0\\.1:\\d+ -> dev:${hashPort}\\n` +
          `Forwarding 127\\.0\\.0\\.1:\\d+ -> dev:${remote}\\n$`,
      ),
    )
    expect(forward.ports).toHaveLength(2)
    expect(await forward.stop()).toBe(0)
  })

  it('should carry 100 connections at once, their bytes intact both ways (B10)', async () => {
    const forward = await startForward([`0:${hashPort}`])
    const port = forward.ports[0]!
    await Promise.all(Array.from({ length: 100 }, () => hashRound(port)))
    // And again, on the same connection to the agent.
    await Promise.all(Array.from({ length: 100 }, () => hashRound(port)))
    expect(forward.stderr()).toBe('')
    expect(await forward.stop()).toBe(0)
  })

  it('should close connections to a refused port at once and keep forwarding (B10)', async () => {
    const forward = await startForward([`0:${await closedPort()}`, `0:${hashPort}`])
    const [refused, good] = forward.ports as [number, number]

    // Nothing in these sockets times out: each closes because the forward
    // closed it on the agent's refusal, or the test fails on its timeout.
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, async () => {
        const socket = connect(refused, '127.0.0.1')
        const received: Buffer[] = []
        socket.on('data', (c: Buffer) => received.push(c))
        socket.on('error', () => undefined)
        await new Promise((resolve) => socket.on('close', resolve))
        return Buffer.concat(received).length
      }),
    )
    expect(outcomes).toEqual(Array(50).fill(0))
    expect(forward.stderr()).toMatch(/refused/)

    await Promise.all(Array.from({ length: 20 }, () => hashRound(good)))
    expect(await forward.stop()).toBe(0)
  })

  it('should deliver the whole reply to a client that half-closed first', async () => {
    // Answers only after the client's FIN: 1 MiB derived from what it read.
    const late = createServer({ allowHalfOpen: true }, (socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (c: Buffer) => chunks.push(c))
      socket.on('end', () => {
        const seed = Buffer.concat(chunks)
        socket.end(Buffer.concat(Array.from({ length: (1024 * 1024) / seed.length }, () => seed)))
      })
    })
    const forward = await startForward([`0:${await listen(late)}`])
    try {
      const socket = connect(forward.ports[0]!, '127.0.0.1')
      const chunks: Buffer[] = []
      socket.on('data', (c: Buffer) => chunks.push(c))
      socket.end('0123456789abcdef')
      await once(socket, 'end')
      const reply = Buffer.concat(chunks)
      expect(reply.length).toBe(MiB)
      expect(reply.toString()).toBe('0123456789abcdef'.repeat(MiB / 16))
    } finally {
      late.close()
      await forward.stop()
    }
  })

  it('should move 1 GiB to a slow reader byte-exact with bounded memory (B26)', async () => {
    const total = 1024 * MiB
    const block = randomBytes(MiB)
    const sent = createHash('sha256')
    const source = createServer((socket) => {
      socket.on('error', () => undefined)
      let index = 0
      const pump = (): void => {
        while (index < total / MiB) {
          const chunk = Buffer.from(block)
          chunk.writeUInt32BE(index++, 0)
          sent.update(chunk)
          if (!socket.write(chunk)) {
            socket.once('drain', pump)
            return
          }
        }
        socket.end()
      }
      pump()
    })
    const forward = await startForward([`0:${await listen(source)}`])
    const pids = { cli: forward.child.pid!, agent: await agentPid() }

    // The reader stalls for 150 ms after every 32 MiB, so the whole chain
    // fills up and must push back to the source.
    let received = 0
    const samples: { at: number; cli: number; agent: number }[] = []
    const sampler = setInterval(() => {
      void Promise.all([rssMiB(pids.cli), rssMiB(pids.agent)]).then(([cli, agent]) =>
        samples.push({ at: received, cli, agent }),
      )
    }, 250)
    const got = createHash('sha256')
    try {
      const socket = connect(forward.ports[0]!, '127.0.0.1')
      let nextStall = 32 * MiB
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length
        got.update(chunk)
        if (received >= nextStall) {
          nextStall += 32 * MiB
          socket.pause()
          setTimeout(() => socket.resume(), 150)
        }
      })
      await once(socket, 'end')
    } finally {
      clearInterval(sampler)
      source.close()
    }

    expect(received).toBe(total)
    expect(got.digest('hex')).toBe(sent.digest('hex'))

    // A fixed, generous bound (idle: ~100 MiB for the CLI, ~150 for the
    // agent), and no growth with the volume moved: the second half of the
    // transfer peaks no higher than the first half plus slack for garbage
    // the collector has not yet returned. Unbounded buffering of 1 GiB
    // would break both.
    const firstHalf = samples.filter((s) => s.at < total / 2)
    const secondHalf = samples.filter((s) => s.at >= total / 2)
    expect(firstHalf.length).toBeGreaterThan(0)
    expect(secondHalf.length).toBeGreaterThan(0)
    const peaks = (list: typeof samples, who: 'cli' | 'agent'): number =>
      Math.round(Math.max(...list.map((s) => s[who])))
    console.info(
      `1 GiB forward: peak RSS cli ${peaks(firstHalf, 'cli')}/${peaks(secondHalf, 'cli')} MiB, ` +
        `agent ${peaks(firstHalf, 'agent')}/${peaks(secondHalf, 'agent')} MiB (first/second half)`,
    )
    for (const who of ['cli', 'agent'] as const) {
      const peak = Math.max(...samples.map((s) => s[who]))
      expect(peak, `${who} peak RSS in MiB`).toBeLessThan(400)
      const early = Math.max(...firstHalf.map((s) => s[who]))
      const late = Math.max(...secondHalf.map((s) => s[who]))
      expect(late, `${who} RSS in MiB, second half vs first half`).toBeLessThan(early + 128)
    }
    expect(await forward.stop()).toBe(0)
  }, 180_000)

  // The full matrix of --tcp values is in port-forward.test.ts; here, how the CLI reports one.
  it.each([
    ['no --tcp', [], /Nothing to forward/],
    ['a word', ['--tcp', 'web'], /Invalid --tcp "web"/],
    ['the same local port twice', ['--tcp', '18080:80', '--tcp', '18080:81'], /given twice/],
  ])('should refuse %s with MESH_BAD_ARGUMENT', async (_what, flags, message) => {
    const r = await server.cli(['port-forward', 'dev', ...flags])
    expect(r.exitCode).toBe(1)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(message)
    expect(r.stderr).toMatch(/^error: .*\(MESH_BAD_ARGUMENT\)$/)
  })

  it('should ping over a direct path and print a summary', async () => {
    const r = await server.cli(['ping', 'dev', '-n', '3', '-i', '0.2'])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    const lines = r.stdout.trimEnd().split('\n')
    expect(lines.slice(0, 3)).toEqual(
      Array(3).fill(expect.stringMatching(/^pong from dev via direct \(tcp\) in \d+\.\d+ ms$/)),
    )
    expect(lines[3]).toBe('--- dev ping statistics ---')
    expect(lines[4]).toBe('3 sent, 3 received, 0% lost, via direct (tcp)')
    expect(lines[5]).toMatch(/^rtt min\/avg\/max = [\d.]+\/[\d.]+\/[\d.]+ ms$/)
  })

  it('should print ping results as JSON with -o json', async () => {
    const r = await server.cli(['ping', 'dev', '-n', '2', '-i', '0', '-o', 'json'])
    expect(r.exitCode, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report).toMatchObject({ workspace: 'dev', path: 'direct (tcp)', sent: 2, received: 2 })
    expect(report.pings).toEqual([
      { seq: 1, rtt: expect.any(Number), path: 'direct (tcp)' },
      { seq: 2, rtt: expect.any(Number), path: 'direct (tcp)' },
    ])
    expect(report.min).toBeLessThanOrEqual(report.avg)
    expect(report.avg).toBeLessThanOrEqual(report.max)
  })

  it('should report speed test throughput both ways and the path', async () => {
    const r = await server.cli(['speedtest', 'dev', '-t', '0.5'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^Speed test to dev via direct \(tcp\), 0\.5 s each way:\n/)
    expect(r.stdout).toMatch(/^upload: +\d+\.\d\d MB\/s \([\d.]+ MB in [\d.]+ s\)$/m)
    expect(r.stdout).toMatch(/^download: +\d+\.\d\d MB\/s \([\d.]+ MB in [\d.]+ s\)$/m)

    const json = await server.cli(['speedtest', 'dev', '-t', '0.5', '-o', 'json'])
    expect(json.exitCode, json.stderr).toBe(0)
    const report = JSON.parse(json.stdout)
    expect(report).toMatchObject({ workspace: 'dev', path: 'direct (tcp)', seconds: 0.5 })
    for (const direction of ['upload', 'download']) {
      expect(report[direction].bytes).toBeGreaterThan(0)
      expect(report[direction].megabytesPerSecond).toBeGreaterThan(0)
    }
  })

  it('should ping, forward and speed test through the relay with --path relay (B13)', async () => {
    const ping = await server.cli(['ping', 'dev', '-n', '2', '-i', '0', '--path', 'relay'])
    expect(ping.exitCode, ping.stderr).toBe(0)
    const relayed = /relayed via \/ip[46]\/[\w.:]+\/tcp\/\d+\/p2p\/\w+/
    const lines = ping.stdout.split('\n')
    for (const line of lines.slice(0, 2)) {
      expect(line).toMatch(new RegExp(`^pong from dev ${relayed.source} in [\\d.]+ ms$`))
    }
    expect(lines[3]).toMatch(new RegExp(`^2 sent, 2 received, 0% lost, ${relayed.source}$`))

    const speed = await server.cli([
      'speedtest',
      'dev',
      '-t',
      '0.3',
      '--path',
      'relay',
      '-o',
      'json',
    ])
    expect(speed.exitCode, speed.stderr).toBe(0)
    const report = JSON.parse(speed.stdout)
    expect(report.path).toMatch(relayed)
    expect(report.upload.bytes).toBeGreaterThan(0)
    expect(report.download.bytes).toBeGreaterThan(0)

    const forward = await startForward([`0:${hashPort}`], ['--path', 'relay'])
    await Promise.all(Array.from({ length: 20 }, () => hashRound(forward.ports[0]!)))
    expect(await forward.stop()).toBe(0)
  })

  it.each([
    ['ping', ['--count=-1'], /Invalid -n "-1"/],
    ['ping', ['-n', '1.5'], /whole number/],
    ['speedtest', ['-t', '0'], /Invalid -t "0"/],
    ['speedtest', ['-t', '31'], /0\.1 to 30/],
  ])('should refuse bad %s flags %j', async (command, flags, message) => {
    const r = await server.cli([command, 'dev', ...flags])
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toMatch(message)
    expect(r.stderr).toMatch(/^error: .*\(MESH_BAD_ARGUMENT\)$/)
  })
})
