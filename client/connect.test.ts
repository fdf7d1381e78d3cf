/**
 * `coder-mesh connect` against the real stack: a real `coder-mesh server`,
 * a workspace of the shipped `local` template (real Terraform, a real agent
 * on this machine, so its loopback is ours), curl as the SOCKS5 client and
 * OpenSSH through the ProxyCommand config-ssh writes.
 */
import { execa, type ResultPromise } from 'execa'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFile, stat, unlink, writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { createServer as createHttpServer } from 'node:http'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  BIN,
  discardTestServer,
  loginOwner,
  newCliUser,
  OWNER,
  removeTree,
  runCli,
  savedSession,
  startTestServer,
  waitFor,
  writeSshConfig,
  type TestServer,
} from '../test/harness.ts'
import { MAX_STREAMS_PER_PROTOCOL } from '../netstack/constants.ts'
import { ApiClient } from '../sdk/api-client.ts'
import { parseSocksAddress, workspaceFromMeshHost } from './connect.ts'
import { LINK_SOCKET } from './connect-link.ts'

const MiB = 1024 * 1024

describe('connect: names and flags', () => {
  it('should map NAME.coder-mesh and NAME.OWNER.coder-mesh to workspaces, nothing else', () => {
    expect(workspaceFromMeshHost('dev.coder-mesh')).toBe('dev')
    expect(workspaceFromMeshHost('DEV.Coder-Mesh.')).toBe('dev')
    expect(workspaceFromMeshHost('dev.alice.coder-mesh')).toBe('alice/dev')
    for (const host of [
      'coder-mesh',
      'example.com',
      '127.0.0.1',
      'a.b.c.coder-mesh',
      '-x.coder-mesh',
      'dev.coder-mesh.example.com',
      '..coder-mesh',
    ]) {
      expect(workspaceFromMeshHost(host), host).toBeUndefined()
    }
  })

  it('should parse --socks and refuse what is not an address', () => {
    expect(parseSocksAddress('1055')).toEqual({ host: '127.0.0.1', port: 1055 })
    expect(parseSocksAddress('0.0.0.0:1080')).toEqual({ host: '0.0.0.0', port: 1080 })
    expect(parseSocksAddress('[::1]:0')).toEqual({ host: '::1', port: 0 })
    for (const bad of [
      '',
      'x',
      ':',
      '127.0.0.1:',
      '127.0.0.1:70000',
      'a:b:1080',
      '[::1]',
      '::1:80',
      '0:0',
      '1080:1080',
    ]) {
      expect(() => parseSocksAddress(bad), bad).toThrow(/Invalid --socks/)
    }
  })
})

/** A SOCKS5 CONNECT request (RFC 1928) to `host`:`port`, by name. */
function socksConnect(host: string, port: number): Buffer {
  const name = Buffer.from(host)
  const portBytes = Buffer.alloc(2)
  portBytes.writeUInt16BE(port)
  return Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, portBytes])
}

/** The REP byte of a SOCKS5 reply on `socket`; -1 if it closes first. */
function replyCode(socket: Socket): Promise<number> {
  return new Promise((resolve) => {
    const onData = (chunk: Buffer): void => {
      socket.off('close', onClose)
      resolve(chunk[1] ?? -1)
    }
    const onClose = (): void => {
      socket.off('data', onData)
      resolve(-1)
    }
    socket.once('data', onData)
    socket.once('close', onClose)
  })
}

describe('coder-mesh connect', () => {
  let server: TestServer
  let http: Server
  let httpPort: number
  const body = randomBytes(8 * MiB)
  const running: ResultPromise[] = []

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
    const push = await server.cli(['templates', 'push', 'local'])
    if (push.exitCode !== 0) throw new Error(`push failed: ${push.stderr}`)
    const create = await server.cli(['create', 'dev', '--template', 'local', '-y'])
    if (create.exitCode !== 0) throw new Error(`create failed: ${create.stdout}${create.stderr}`)
    http = createHttpServer((_req, res) => res.end(body))
    http.listen(0, '127.0.0.1')
    await once(http, 'listening')
    httpPort = (http.address() as AddressInfo).port
  }, 180_000)

  afterAll(async () => {
    for (const child of running) child.kill('SIGKILL')
    http?.close()
    await discardTestServer(server, ['dev'])
  })

  interface Connect {
    child: ResultPromise
    port: number
    stderr(): string
  }

  /**
   * Starts `coder-mesh connect --socks 127.0.0.1:0` (as the server's user,
   * or with `env`); resolves once it listens.
   */
  async function startConnect(env = server.env): Promise<Connect> {
    const child = execa(BIN, ['connect', '--socks', '127.0.0.1:0'], {
      env,
      extendEnv: false,
      reject: false,
    })
    running.push(child)
    let out = ''
    let err = ''
    child.stdout?.on('data', (c: Buffer) => (out += c.toString()))
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()))
    await waitFor(
      'connect to listen',
      async () => /SOCKS5 proxy on /.test(out) || child.exitCode !== null,
    )
    const port = Number(/127\.0\.0\.1:(\d+)/.exec(out)?.[1])
    if (!(port > 0)) throw new Error(`connect did not start: ${out}${err}`)
    return { child, port, stderr: () => err }
  }

  /** Creates the member `name` and logs in as them; their session token. */
  async function memberSession(name: string): Promise<string> {
    const password = `${name} password 42`
    const email = `${name}@example.test`
    const created = await server.cli([
      'users',
      'create',
      name,
      '--email',
      email,
      '--password',
      password,
    ])
    expect(created.exitCode, created.stderr).toBe(0)
    return (await new ApiClient({ url: server.url }).login(name, password)).sessionToken
  }

  async function stop(connect: Connect): Promise<number> {
    connect.child.kill('SIGINT')
    return (await connect.child).exitCode ?? -1
  }

  /** curl through the proxy: its exit code, the body, and its error line. */
  async function curl(
    proxyPort: number,
    url: string,
  ): Promise<{ exitCode: number; body: Buffer; stderr: string }> {
    const r = await execa(
      'curl',
      ['-sS', '--max-time', '60', '--socks5-hostname', `127.0.0.1:${proxyPort}`, url],
      { reject: false, encoding: 'buffer' },
    )
    return {
      exitCode: r.exitCode ?? -1,
      body: Buffer.from(r.stdout),
      stderr: Buffer.from(r.stderr).toString(),
    }
  }

  it('should carry HTTP to a workspace port through SOCKS5, byte for byte', async () => {
    const c = await startConnect()
    try {
      const first = await curl(c.port, `http://dev.coder-mesh:${httpPort}/`)
      expect(first.exitCode, first.stderr).toBe(0)
      const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')
      expect(sha(first.body)).toBe(sha(body))
      expect(c.stderr()).toMatch(/Connected to dev via direct \(tcp\)\./)

      // Many at once, on the same connection to the agent.
      const many = await Promise.all(
        Array.from({ length: 8 }, () => curl(c.port, `http://dev.coder-mesh:${httpPort}/`)),
      )
      for (const r of many) expect(sha(r.body)).toBe(sha(body))
      // Named with its owner, it is the same workspace and the same connection.
      const owned = await curl(c.port, `http://dev.${OWNER.username}.coder-mesh:${httpPort}/`)
      expect(sha(owned.body)).toBe(sha(body))
      expect(c.stderr().match(/Connected to /g)).toHaveLength(1)

      // Each forwarded stream in the agent is a Duplex in two pipelines:
      // listeners of its own, not a leak for Node to warn of in the log.
      const found = await execa('find', [server.dataDir, '-name', 'agent.log'])
      const logs = found.stdout.split('\n').filter((line) => line !== '')
      expect(logs.length).toBeGreaterThan(0)
      for (const log of logs) {
        expect(await readFile(log, 'utf8')).not.toMatch(/MaxListenersExceededWarning/)
      }
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 120_000)

  it('should queue the streams beyond the agent limit instead of refusing them', async () => {
    // A service that holds every connection open, so every stream stays in use.
    const held: Socket[] = []
    const hold = createServer((socket) => {
      held.push(socket)
      socket.on('error', () => undefined)
    })
    hold.listen(0, '127.0.0.1')
    await once(hold, 'listening')
    const holdPort = (hold.address() as AddressInfo).port
    const c = await startConnect()
    const total = MAX_STREAMS_PER_PROTOCOL + 6
    const clients: Socket[] = []
    try {
      const replies = await Promise.all(
        Array.from({ length: total }, async () => {
          const client = connect(c.port, '127.0.0.1')
          clients.push(client)
          client.on('error', () => undefined)
          await once(client, 'connect')
          client.write(Buffer.from([5, 1, 0]))
          await once(client, 'readable')
          client.read(2)
          client.write(socksConnect('dev.coder-mesh', holdPort))
          return { client, reply: replyCode(client) }
        }),
      )
      await waitFor(
        'the agent limit of streams',
        async () => held.length >= MAX_STREAMS_PER_PROTOCOL,
      )

      // Six streams end; the six waiting take their places.
      for (const client of clients.slice(0, 6)) client.destroy()
      const codes = await Promise.all(replies.map((r) => r.reply))
      expect(codes.filter((code) => code !== 0)).toEqual([])
      await waitFor('every connection carried', async () => held.length === total)
    } finally {
      for (const client of clients) client.destroy()
      for (const socket of held) socket.destroy()
      hold.close()
      expect(await stop(c)).toBe(0)
    }
  }, 180_000)

  it('should refuse hosts off the mesh, closed ports and garbage, and keep serving', async () => {
    const c = await startConnect()
    try {
      const outside = await curl(c.port, `http://127.0.0.1:${httpPort}/`)
      expect(outside.exitCode).toBe(97) // curl: the proxy refused
      // curl names the SOCKS reply: 2, not allowed by the rules.
      expect(outside.stderr).toMatch(/\(2\)$/m)
      expect(c.stderr()).toMatch(/Refused a SOCKS connection to 127\.0\.0\.1:\d+: only NAME/)

      const free = createServer()
      free.listen(0, '127.0.0.1')
      await once(free, 'listening')
      const closed = (free.address() as AddressInfo).port
      await new Promise((resolve) => free.close(resolve))
      const refused = await curl(c.port, `http://dev.coder-mesh:${closed}/`)
      expect(refused.exitCode).toBe(97)
      expect(refused.stderr).toMatch(/\(5\)$/m) // connection refused

      const unknown = await curl(c.port, `http://nope.coder-mesh:${httpPort}/`)
      expect(unknown.exitCode).toBe(97)
      await waitFor('the refusal logged', async () =>
        /Could not reach nope\.coder/.test(c.stderr()),
      )

      // Not SOCKS at all: the connection is dropped, the proxy lives on.
      const junk = connect(c.port, '127.0.0.1')
      junk.on('error', () => undefined)
      junk.end(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
      await once(junk, 'close')

      const after = await curl(c.port, `http://dev.coder-mesh:${httpPort}/`)
      expect(after.exitCode).toBe(0)
      expect(after.body.length).toBe(body.length)
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 120_000)

  it('should refuse a second connect for one config folder; replace a stale link', async () => {
    const c = await startConnect()
    const link = join(server.configDir, LINK_SOCKET)
    expect((await stat(link)).mode & 0o777).toBe(0o600)

    const second = await server.cli(['connect', '--socks', '127.0.0.1:0'])
    expect(second.exitCode).toBe(1)
    expect(second.stderr).toMatch(/already running .*\(MESH_ALREADY_RUNNING\)/)

    // Killed: its link stays behind. ssh does without it; a new connect takes its place.
    c.child.kill('SIGKILL')
    await c.child
    expect((await stat(link)).isSocket()).toBe(true)
    const viaOwn = await server.ssh('dev', 'echo own')
    expect(viaOwn.stdout.trim()).toBe('own')

    const again = await startConnect()
    expect(await stop(again)).toBe(0)
    await expect(stat(link)).rejects.toThrow(/ENOENT/)
  }, 120_000)

  it('should leave alone what is not its link; do without one on too long a path', async () => {
    const link = join(server.configDir, LINK_SOCKET)
    await writeFile(link, 'not a socket')
    try {
      const refused = await server.cli(['connect', '--socks', '127.0.0.1:0'])
      expect(refused.exitCode).toBe(1)
      expect(refused.stderr).toMatch(/not a socket is in its place.*\(MESH_CONFIG_UNWRITABLE\)/)
      expect(await readFile(link, 'utf8')).toBe('not a socket')
    } finally {
      await unlink(link)
    }

    // A Unix socket path holds at most 107 bytes.
    const deep = join(server.home, 'd'.repeat(120))
    const session = await savedSession(server.configDir)
    const env = {
      ...server.env,
      CODER_MESH_CONFIG_DIR: deep,
      CODER_MESH_URL: session.url,
      CODER_MESH_SESSION_TOKEN: session.sessionToken,
    }
    const c = await startConnect(env)
    try {
      expect(c.stderr()).toMatch(/no link for ssh: the path .* is \d+ bytes, longer than the 107/)
      const r = await curl(c.port, `http://dev.coder-mesh:${httpPort}/`)
      expect(r.exitCode, r.stderr).toBe(0)
      const ssh = await runCli(env, ['ssh', 'dev', '--', 'echo own'])
      expect(ssh.stdout.trim()).toBe('own')
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 120_000)

  it("should leave another connect's link in place when it stops", async () => {
    const link = join(server.configDir, LINK_SOCKET)
    const first = await startConnect()
    // Its link removed by hand, a second connect makes its own.
    await unlink(link)
    const second = await startConnect()
    expect(await stop(first)).toBe(0)
    expect((await stat(link)).isSocket()).toBe(true)
    const linked = await server.ssh('dev', 'echo linked')
    expect(linked.stdout.trim()).toBe('linked')
    expect(second.stderr()).toMatch(/Connected to dev/)

    expect(await stop(second)).toBe(0)
    await expect(stat(link)).rejects.toThrow(/ENOENT/)
  }, 120_000)

  it('should be passed over by ssh when it hangs', async () => {
    const c = await startConnect()
    const pid = c.child.pid ?? 0
    // Stopped, it still has its link, and the kernel still takes connections on it.
    process.kill(pid, 'SIGSTOP')
    try {
      const r = await server.cli(['ssh', 'dev', '--', 'echo own'], { timeout: 50_000 })
      expect(r.stdout.trim()).toBe('own')
      expect(r.exitCode).toBe(0)
    } finally {
      process.kill(pid, 'SIGCONT')
      expect(await stop(c)).toBe(0)
    }
  }, 60_000)

  it('should stop as on Ctrl-C when its terminal closes (SIGHUP)', async () => {
    const c = await startConnect()
    c.child.kill('SIGHUP')
    expect((await c.child).exitCode).toBe(0)
    expect(c.stderr()).toMatch(/Stopping/)
    await expect(stat(join(server.configDir, LINK_SOCKET))).rejects.toThrow(/ENOENT/)
  }, 60_000)

  it('should drop a SOCKS client that sends its request a byte at a time', async () => {
    const c = await startConnect()
    try {
      const client = connect(c.port, '127.0.0.1')
      client.on('error', () => undefined)
      await once(client, 'connect')
      // Not events.once: it rejects on the EPIPE a write into the dropped socket meets.
      const closed = new Promise((resolve) => client.once('close', resolve))
      let sent = 0
      const request = Buffer.concat([Buffer.from([5, 1, 0]), socksConnect('dev.coder-mesh', 80)])
      // Each byte well inside the 10 s the whole handshake may take.
      const trickle = setInterval(() => {
        if (!client.writable || sent === request.length) return
        client.write(request.subarray(sent, sent + 1), () => undefined)
        sent++
      }, 1000)
      await closed
      clearInterval(trickle)
      expect(sent).toBeLessThan(request.length)
      expect(c.child.exitCode).toBeNull()
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 60_000)

  it('should refuse a bad or taken --socks address', async () => {
    const bad = await server.cli(['connect', '--socks', 'localhost:99999'])
    expect(bad.exitCode).toBe(1)
    expect(bad.stderr).toMatch(/Invalid --socks "localhost:99999".*\(MESH_BAD_ARGUMENT\)/)

    const taken = createServer()
    taken.listen(0, '127.0.0.1')
    await once(taken, 'listening')
    const port = (taken.address() as AddressInfo).port
    try {
      const inUse = await server.cli(['connect', '--socks', `127.0.0.1:${port}`])
      expect(inUse.exitCode).toBe(1)
      expect(inUse.stderr).toMatch(/address is in use.*\(MESH_BAD_ARGUMENT\)/)
      // The link of the failed start is gone: ssh does not try it.
      await expect(stat(join(server.configDir, LINK_SOCKET))).rejects.toThrow(/ENOENT/)
    } finally {
      taken.close()
    }
  }, 60_000)

  it('should live through a SOCKS client that resets before the reply', async () => {
    const c = await startConnect()
    try {
      // Greeting, then a CONNECT to dev.coder-mesh:PORT; the reply waits for
      // the first dial to the agent, and the client resets before it.
      const client = connect(c.port, '127.0.0.1')
      client.on('error', () => undefined)
      await once(client, 'connect')
      client.write(Buffer.from([5, 1, 0]))
      await once(client, 'data')
      client.write(socksConnect('dev.coder-mesh', httpPort))
      client.resetAndDestroy()

      const after = await curl(c.port, `http://dev.coder-mesh:${httpPort}/`)
      expect(after.exitCode, after.stderr).toBe(0)
      expect(after.body.length).toBe(body.length)
      expect(c.child.exitCode).toBeNull()
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 120_000)

  it('should end the sessions it carries with 255 when it stops, and exit 0 itself', async () => {
    const c = await startConnect()
    const session = (command: string[]): { child: ResultPromise; out: () => string } => {
      const child = execa(command[0] ?? '', command.slice(1), {
        env: server.env,
        extendEnv: false,
        reject: false,
      })
      running.push(child)
      let out = ''
      child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()))
      return { child, out: () => out }
    }
    const cli = session([BIN, 'ssh', 'dev', '--', 'echo up; sleep 60'])
    const config = await writeSshConfig(server.home)
    const openssh = session(['ssh', '-F', config, 'coder-mesh.dev', 'echo up; sleep 60'])
    await waitFor(
      'both sessions to start',
      async () => cli.out().includes('up') && openssh.out().includes('up'),
    )

    expect(await stop(c)).toBe(0)
    expect(c.stderr()).not.toMatch(/handle type|ERR_/)
    const [viaCli, viaOpenSsh] = await Promise.all([cli.child, openssh.child])
    // The ProxyCommand's own line, beside OpenSSH's.
    expect(String(viaOpenSsh.stderr)).toMatch(
      /^error: Session ended: coder-mesh connect stopped\.$/m,
    )
    expect(viaCli.exitCode, String(viaCli.stderr)).toBe(255)
    expect(String(viaCli.stderr)).toMatch(/^error: Session ended: coder-mesh connect stopped\.$/m)
    expect(viaOpenSsh.exitCode, String(viaOpenSsh.stderr)).toBe(255)
  }, 120_000)

  it('should fail ssh in one line when its stream ends during the SSH handshake', async () => {
    // A link that grants a stream that closes once SSH has begun, as a
    // stream the agent turns away after the version lines does.
    const link = createServer({ allowHalfOpen: true }, (socket) => {
      socket.once('data', () =>
        socket.end('{"ok":true,"path":"direct (tcp)"}\nSSH-2.0-OpenSSH_9.0\r\n'),
      )
    })
    link.listen(join(server.configDir, LINK_SOCKET))
    await once(link, 'listening')
    try {
      const r = await server.cli(['ssh', 'dev', '--', 'true'])
      expect(r.exitCode).toBe(1)
      expect(r.stderr).toMatch(/^error: The SSH handshake .* failed.*\(MESH_CONNECT_FAILED\)$/)
    } finally {
      link.close()
    }
  }, 60_000)

  it("should not hand another login's commands its connection", async () => {
    const carol = await memberSession('carol')

    const c = await startConnect()
    try {
      // carol has no workspace `dev`: through connect's link she would have
      // reached the owner's.
      const env = { ...server.env, CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: carol }
      const asCarol = await runCli(env, ['ssh', 'dev', '--', 'echo reached'])
      expect(asCarol.stdout).not.toMatch(/reached/)
      expect(asCarol.exitCode).toBe(1)
      expect(asCarol.stderr).toMatch(/\(MESH_WORKSPACE_NOT_FOUND\)/)

      const asOwner = await server.cli(['ssh', 'dev', '--', 'echo reached'])
      expect(asOwner.stdout.trim()).toBe('reached')
    } finally {
      expect(await stop(c)).toBe(0)
    }
  }, 120_000)

  it('should stop serving a user who was suspended, and let ssh say why', async () => {
    const token = await memberSession('dora')
    const dora = await newCliUser({ CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: token })
    const built = await runCli(dora.env, ['create', 'lab', '--template', 'local', '-y'])
    expect(built.exitCode, built.stderr).toBe(0)

    const c = await startConnect(dora.env)
    try {
      const before = await runCli(dora.env, ['ssh', 'lab', '--', 'echo in'])
      expect(before.stdout.trim()).toBe('in')

      // Suspending ends her sessions and her connections to agents. connect
      // then asks the coordinator before dialing again, and hears it: ssh
      // falls back to asking itself, and says what happened.
      expect((await server.cli(['users', 'suspend', 'dora'])).exitCode).toBe(0)
      // Until the agent has heard of it and dropped her connection, a
      // session may still start, or be cut off midway; then ssh is refused.
      let after = { exitCode: 0, stdout: '', stderr: '' }
      await waitFor('ssh to be refused', async () => {
        after = await runCli(dora.env, ['ssh', 'lab', '--', 'echo in'])
        return /\(MESH_UNAUTHENTICATED\)/.test(after.stderr)
      })
      expect(after.stdout).toBe('')
      expect(after.stderr).toMatch(/\(MESH_UNAUTHENTICATED\)/)
      expect(c.stderr()).not.toMatch(/Reconnected/)
    } finally {
      expect(await stop(c)).toBe(0)
      await server.cli(['users', 'activate', 'dora'])
      await server.cli(['delete', 'dora/lab', '-y'])
      await removeTree(dora.home)
    }
  }, 180_000)

  it('should carry ssh and OpenSSH on its connection, even with the coordinator down', async () => {
    const c = await startConnect()
    try {
      const warm = await server.ssh('dev', 'echo warm')
      expect(warm.stdout.trim()).toBe('warm')

      const missing = await server.cli(['ssh', 'nope', '--', 'true'])
      expect(missing.exitCode).toBe(1)
      expect(missing.stderr).toMatch(/MESH_WORKSPACE_NOT_FOUND/)

      // Without the coordinator a fresh client could get no ticket; connect
      // holds one and its connection, so both kinds of ssh go on working.
      await server.stop()
      const viaLink = await server.ssh('dev', 'echo linked; exit 3')
      expect(viaLink.stdout.trim()).toBe('linked')
      expect(viaLink.exitCode).toBe(3)
      const cli = await server.cli(['ssh', 'dev', '--', 'echo cli'])
      expect(cli.stdout.trim()).toBe('cli')
      expect(cli.exitCode).toBe(0)
    } finally {
      expect(await stop(c)).toBe(0)
      await server.restart()
    }
  }, 120_000)
})
