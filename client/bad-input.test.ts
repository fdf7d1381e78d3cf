/**
 * The CLI given bad input, run as users run it (bin/coder-mesh in a child
 * process): URLs that are not coordinators, malformed URLs and tokens, names
 * like `..`, template folders that are files or too large, config folders
 * that cannot hold a session, and server-provided strings with terminal
 * escapes. Stand-in servers record every request, to show that refused
 * input never reaches the network; a real `coder-mesh server` checks what
 * a real login saves.
 */
import { once } from 'node:events'
import { access, chmod, mkdir, mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  createServer as createTcpServer,
  type AddressInfo,
  type Server,
  type Socket,
} from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiClient } from '../sdk/api-client.ts'
import {
  newCliUser,
  OWNER,
  processesUnder,
  removeTree,
  runCli,
  savedSession,
  startTestServer,
  type CliResult,
  type CliUser,
  type TestServer,
} from '../test/harness.ts'
import { MAX_TEMPLATE_BYTES } from './commands/templates.ts'
import { formatTable, printable } from './output.ts'

// Many CLI runs per test, on a machine shared with other test runs.
const SLOW = { timeout: 240_000 }

function expectOneLineError(r: CliResult, code: string): void {
  expect(r.exitCode, r.stderr).toBe(1)
  expect(r.stderr).toMatch(new RegExp(`^error: .*\\(${code}\\)\\n$`))
  expect(r.stderr).not.toMatch(/\n\s+at /)
}

interface FakeServer {
  url: string
  /** `METHOD /path?query` of every request, in order. */
  requests: string[]
  close(): Promise<void>
}

/** A stand-in HTTP server; `handle` answers each request. */
async function fakeServer(
  handle: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<FakeServer> {
  const requests: string[] = []
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`)
    req.resume()
    req.on('end', () => handle(req, res))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

const NOW = new Date().toISOString()

function fakeBuild(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'b-1',
    workspaceId: 'w-1',
    workspaceName: 'dev',
    number: 1,
    transition: 'start',
    templateVersion: 1,
    status: 'succeeded',
    createdAt: NOW,
    ...extra,
  }
}

function fakeWorkspace(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'w-1',
    name: 'dev',
    owner: 'alice',
    template: 'local',
    templateVersion: 1,
    status: 'running',
    latestBuild: fakeBuild(),
    agent: null,
    createdAt: NOW,
    ...extra,
  }
}

/** Names of temporary session files left in `dir`. */
async function leftoverTemps(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[])
  return names.filter((name) => name.endsWith('.tmp'))
}

describe('printable and formatTable', () => {
  it('should escape control characters and keep one table row per item', () => {
    expect(printable('a\tb')).toBe('a b')
    expect(printable('red\u001b[31m!\nnext\r')).toBe('red\\u001b[31m!\\nnext\\r')
    expect(printable('\u009b2J \u202eevil \u0007')).toBe('\\u009b2J \\u202eevil \\u0007')
    expect(printable('日本 — ok')).toBe('日本 — ok')

    const out = formatTable(['NAME', 'MESSAGE'], [['dev', 'one\ntwo\u001b]0;title\u0007']])
    expect(out.split('\n')).toHaveLength(3)
    expect(out).not.toMatch(/(?!\n)\p{Cc}/u)
    expect(out).toContain('one\\ntwo\\u001b]0;title\\u0007')
  })
})

describe('coder-mesh against servers that are not coordinators', SLOW, () => {
  let cli: CliUser
  let foreign: FakeServer[] = []
  const valid = { url: 'http://127.0.0.1:7080', sessionToken: 'cms_valid-token' }

  beforeAll(async () => {
    cli = await newCliUser()
    foreign = await Promise.all([
      // `{}` to everything.
      fakeServer((_req, res) => sendJson(res, 200, {})),
      // A web server's 404 page.
      fakeServer((_req, res) => {
        res.writeHead(404, { 'content-type': 'text/html' })
        res.end('<html><body>Not Found</body></html>')
      }),
      // A web app answering every path with its page.
      fakeServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
        res.end('<!doctype html><title>app</title>')
      }),
    ])
  })

  afterAll(async () => {
    await Promise.all(foreign.map((f) => f.close()))
    if (cli !== undefined) await removeTree(cli.home)
  })

  it('should refuse to log in, create nothing and keep the saved session', async () => {
    await mkdir(cli.configDir, { recursive: true, mode: 0o700 })
    const file = join(cli.configDir, 'session.json')
    const before = JSON.stringify(valid, null, 2) + '\n'
    await writeFile(file, before, { mode: 0o600 })

    const answers = ['200 application/json', '404 text/html', '200 text/html']
    for (const [i, server] of foreign.entries()) {
      const r = await runCli(cli.env, [
        'login',
        server.url,
        '--username',
        'admin',
        '--password',
        'correct-horse-42',
        '--first-user-email',
        'admin@example.test',
      ])
      expectOneLineError(r, 'MESH_NOT_A_COORDINATOR')
      expect(r.stderr).toContain(`${server.url} does not look like a coder-mesh server`)
      expect(r.stderr).toContain(`it answered ${answers[i]}`)
      expect(r.stderr).not.toMatch(/Unexpected token|JSON at position|undefined/)
      expect(r.stdout).toBe('')
      // Only the build info was asked for: nothing was created.
      expect(server.requests).toEqual(['GET /api/v1/buildinfo'])
      expect(await readFile(file, 'utf8')).toBe(before)
      expect(await leftoverTemps(cli.configDir)).toEqual([])
    }
  })

  it('should say that a URL is not a coordinator for every command, never MESH_INTERNAL', async () => {
    for (const server of foreign) {
      const env = { ...cli.env, CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: 'cms_x' }
      for (const args of [['list'], ['show', 'dev'], ['templates', 'list']]) {
        const r = await runCli(env, args)
        expectOneLineError(r, 'MESH_NOT_A_COORDINATOR')
        expect(r.stderr).toContain('does not look like a coder-mesh server')
      }
    }
  })

  it('should say that a server does not speak HTTP', async () => {
    const sockets = new Set<Socket>()
    const ssh = createTcpServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => undefined)
      socket.end('SSH-2.0-OpenSSH_9.6\r\n')
    })
    ssh.listen(0, '127.0.0.1')
    await once(ssh, 'listening')
    try {
      const { port } = ssh.address() as AddressInfo
      const env = {
        ...cli.env,
        CODER_MESH_URL: `http://127.0.0.1:${port}`,
        CODER_MESH_SESSION_TOKEN: 'cms_x',
      }
      const r = await runCli(env, ['list'])
      expectOneLineError(r, 'MESH_NOT_A_COORDINATOR')
      expect(r.stderr).toMatch(/did not answer in HTTP/)
    } finally {
      for (const socket of sockets) socket.destroy()
      await closeTcp(ssh)
    }
  })

  it('should say what is wrong with a malformed URL or token instead of "Cannot reach"', async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { CODER_MESH_URL: 'not a url', CODER_MESH_SESSION_TOKEN: 'cms_x' },
        /^error: CODER_MESH_URL "not a url" is not a URL/,
      ],
      [
        { CODER_MESH_URL: 'ftp://example.com', CODER_MESH_SESSION_TOKEN: 'cms_x' },
        /is not an http:\/\/ or https:\/\/ URL/,
      ],
      [
        { CODER_MESH_URL: foreign[0]!.url, CODER_MESH_SESSION_TOKEN: 'cms_a\ncms_b' },
        /^error: CODER_MESH_SESSION_TOKEN is malformed: it holds a line break\./,
      ],
      [{ CODER_MESH_URL: foreign[0]!.url, CODER_MESH_SESSION_TOKEN: 'cms_a b' }, /holds a space/],
    ]
    const requestsBefore = foreign[0]!.requests.length
    for (const [extra, message] of cases) {
      const r = await runCli({ ...cli.env, ...extra }, ['list'])
      expectOneLineError(r, 'MESH_BAD_ARGUMENT')
      expect(r.stderr).toMatch(message)
      expect(r.stderr).not.toMatch(/Cannot reach|is it running/)
      // The token itself is never printed.
      expect(r.stderr).not.toMatch(/cms_a/)
    }
    expect(foreign[0]!.requests.length).toBe(requestsBefore)
  })

  it('should refuse a malformed token in the session file, naming the file', async () => {
    const user = await newCliUser()
    try {
      await mkdir(user.configDir, { recursive: true })
      const file = join(user.configDir, 'session.json')
      await writeFile(file, JSON.stringify({ url: foreign[0]!.url, sessionToken: 'a\nb' }))
      const r = await runCli(user.env, ['list'])
      expectOneLineError(r, 'MESH_BAD_ARGUMENT')
      expect(r.stderr).toContain(`The token in ${file} is malformed: it holds a line break`)
    } finally {
      await removeTree(user.home)
    }
  })
})

describe('coder-mesh given names that are not names', SLOW, () => {
  let cli: CliUser
  let server: FakeServer

  beforeAll(async () => {
    server = await fakeServer((req, res) => {
      if (req.url?.startsWith('/api/v1/workspaces/dev') === true) {
        sendJson(res, 200, fakeWorkspace())
      } else {
        sendJson(res, 404, { code: 'MESH_NOT_FOUND', message: 'No such route.' })
      }
    })
    cli = await newCliUser({ CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: 'cms_x' })
  })

  afterAll(async () => {
    await server?.close()
    if (cli !== undefined) await removeTree(cli.home)
  })

  it.each([
    ['show', '..'],
    ['show', '.'],
    ['stop', '..'],
    ['start', '.'],
    ['restart', '..'],
    ['delete', '..', '-y'],
    ['delete', '.'],
    ['ssh', '..'],
    ['ssh', 'coder-mesh...'],
    ['ssh', '--stdio', 'coder-mesh...'],
    ['templates', 'versions', '..'],
    ['templates', 'push', '..', '-d', '.'],
    ['port-forward', '..', '--tcp', '0:80'],
    ['ping', '.', '-n', '1'],
    ['show', 'Dev'],
    ['show', 'a/b/c'],
    ['show', '../dev'],
    ['show', 'alice/..'],
  ])('should refuse %s %s before any request', async (...args) => {
    const before = server.requests.length
    const r = await runCli(cli.env, args)
    expectOneLineError(r, 'MESH_INVALID_NAME')
    expect(r.stdout).toBe('')
    expect(server.requests.slice(before)).toEqual([])
  })

  it("should send OWNER/NAME as the API's ?owner=", async () => {
    const before = server.requests.length
    const r = await runCli(cli.env, ['show', 'alice/dev', '-o', 'json'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'dev', owner: 'alice' })
    expect(server.requests.slice(before)).toEqual(['GET /api/v1/workspaces/dev?owner=alice'])
  })

  it('should create only workspaces of your own', async () => {
    const before = server.requests.length
    const r = await runCli(cli.env, ['create', 'alice/dev', '--template', 'local', '-y'])
    expectOneLineError(r, 'MESH_INVALID_NAME')
    expect(server.requests.slice(before)).toEqual([])
  })
})

describe('coder-mesh printing what a server sent', SLOW, () => {
  let cli: CliUser
  let server: FakeServer
  const evil = 'x\u001b]0;pwned\u0007\u001b[2J\nsecond line\u009b31m'

  beforeAll(async () => {
    server = await fakeServer((req, res) => {
      const path = req.url?.split('?')[0]
      if (path === '/api/v1/workspaces') {
        sendJson(res, 200, [fakeWorkspace({ template: evil })])
      } else if (path === '/api/v1/workspaces/dev') {
        const build = fakeBuild({ status: 'failed', error: `apply failed ${evil}` })
        sendJson(res, 200, fakeWorkspace({ owner: evil, latestBuild: build }))
      } else if (path === '/api/v1/templates/local/versions') {
        sendJson(res, 200, [
          {
            template: 'local',
            version: 1,
            message: evil,
            files: ['main.tf'],
            createdBy: 'admin\u001b[8m',
            createdAt: NOW,
          },
        ])
      } else {
        sendJson(res, 404, { code: 'MESH_NOT_FOUND', message: `No route ${evil}` })
      }
    })
    cli = await newCliUser({ CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: 'cms_x' })
  })

  afterAll(async () => {
    await server?.close()
    if (cli !== undefined) await removeTree(cli.home)
  })

  /** Control characters but newline. */
  const controls = /(?!\n)\p{Cc}/u

  it('should escape control characters in table cells, one line per row', async () => {
    const list = await runCli(cli.env, ['list'])
    expect(list.exitCode, list.stderr).toBe(0)
    expect(list.stdout).not.toMatch(controls)
    expect(list.stdout.trimEnd().split('\n')).toHaveLength(2)
    expect(list.stdout).toContain('x\\u001b]0;pwned\\u0007\\u001b[2J\\nsecond line\\u009b31m')

    const versions = await runCli(cli.env, ['templates', 'versions', 'local'])
    expect(versions.exitCode, versions.stderr).toBe(0)
    expect(versions.stdout).not.toMatch(controls)
    expect(versions.stdout.trimEnd().split('\n')).toHaveLength(2)
  })

  it('should escape them in show and in error messages too', async () => {
    const show = await runCli(cli.env, ['show', 'dev'])
    expect(show.exitCode, show.stderr).toBe(0)
    expect(show.stdout).not.toMatch(controls)
    expect(show.stdout).toMatch(/^Owner: +x\\u001b\]0;pwned/m)

    const missing = await runCli(cli.env, ['templates', 'list'])
    expectOneLineError(missing, 'MESH_NOT_FOUND')
    expect(missing.stderr).not.toMatch(controls)
  })
})

describe('coder-mesh templates push and server with bad paths', SLOW, () => {
  let cli: CliUser
  let server: FakeServer
  let files: string

  beforeAll(async () => {
    server = await fakeServer((_req, res) =>
      sendJson(res, 500, { code: 'MESH_INTERNAL', message: 'no' }),
    )
    cli = await newCliUser({ CODER_MESH_URL: server.url, CODER_MESH_SESSION_TOKEN: 'cms_x' })
    files = join(cli.home, 'files')
    await mkdir(files, { recursive: true })
  })

  afterAll(async () => {
    await server?.close()
    if (cli !== undefined) await removeTree(cli.home)
  })

  it('should say that -d names a file, not a folder', async () => {
    const file = join(files, 'main.tf')
    await writeFile(file, 'terraform {}\n')
    const r = await runCli(cli.env, ['templates', 'push', 'x', '-d', file])
    expectOneLineError(r, 'MESH_BAD_ARGUMENT')
    expect(r.stderr).toContain(`${file} is a file, not a folder`)
    expect(r.stderr).not.toMatch(/does not exist/)

    const missing = await runCli(cli.env, ['templates', 'push', 'x', '-d', join(files, 'nope')])
    expect(missing.stderr).toMatch(/does not exist/)
    expect(server.requests).toEqual([])
  })

  it('should refuse a huge file by name and limit before reading it', async () => {
    const dir = join(files, 'huge')
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'main.tf'), 'terraform {}\n')
    // Sparse: 4 GiB that take no disk, and would take the CLI's memory if read.
    const huge = join(dir, 'disk.img')
    await writeFile(huge, '')
    const { truncate } = await import('node:fs/promises')
    await truncate(huge, 4 * 1024 ** 3)
    const r = await runCli(cli.env, ['templates', 'push', 'x', '-d', dir])
    expectOneLineError(r, 'MESH_BAD_ARGUMENT')
    expect(r.stderr).toContain(`File ${join(dir, 'disk.img')} is 4 GiB`)
    expect(r.stderr).toContain('at most 10 MiB')
    expect(server.requests).toEqual([])
  })

  it('should refuse files over the limit in all, naming the largest', async () => {
    const dir = join(files, 'many')
    await mkdir(dir, { recursive: true })
    const part = Math.ceil(MAX_TEMPLATE_BYTES / 3) + 1024
    for (const name of ['a.bin', 'b.bin', 'c.bin']) {
      await writeFile(join(dir, name), Buffer.alloc(part))
    }
    const r = await runCli(cli.env, ['templates', 'push', 'x', '-d', dir])
    expectOneLineError(r, 'MESH_BAD_ARGUMENT')
    expect(r.stderr).toMatch(/holds 10\.0 MiB of files: a template may hold at most 10 MiB/)
    expect(r.stderr).toMatch(/largest: a\.bin 3\.3 MiB/)
    expect(server.requests).toEqual([])
  })

  it('should refuse a --data-dir that is a file, or under one, in one line', async () => {
    const file = join(files, 'not-a-dir')
    await writeFile(file, 'x')
    const r = await runCli(cli.env, ['server', '--data-dir', file, '--address', '127.0.0.1:0'])
    expectOneLineError(r, 'MESH_BAD_ARGUMENT')
    expect(r.stderr).toContain(`The data folder ${file} (--data-dir) is a file, not a folder.`)

    const under = await runCli(cli.env, ['server', '--data-dir', join(file, 'sub')])
    expectOneLineError(under, 'MESH_BAD_ARGUMENT')
    expect(under.stderr).toContain(`${file} is a file, not a folder`)
    expect(under.stderr).not.toMatch(/ENOTDIR/)
  })
})

describe('coder-mesh login and the config folder', SLOW, () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startTestServer()
  })

  afterAll(async () => {
    if (server === undefined) return
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(dirname(server.dataDir))
  })

  const loginArgs = (): string[] => ['login', server.url, '--username', OWNER.username]

  it('should create the first user with --password-stdin, dropping one trailing newline', async () => {
    const both = await runCli(server.env, [...loginArgs(), '--password', 'x', '--password-stdin'])
    expectOneLineError(both, 'MESH_BAD_ARGUMENT')

    const empty = await runCli(server.env, [...loginArgs(), '--password-stdin'], { input: '\n' })
    expectOneLineError(empty, 'MESH_BAD_ARGUMENT')
    expect(empty.stderr).toMatch(/No password on stdin/)

    const noEmail = await runCli(server.env, [...loginArgs(), '--password-stdin'], {
      input: `${OWNER.password}\n`,
    })
    expectOneLineError(noEmail, 'MESH_BAD_ARGUMENT')
    expect(noEmail.stderr).toMatch(/--first-user-email/)

    const r = await runCli(
      server.env,
      [...loginArgs(), '--first-user-email', OWNER.email, '--password-stdin'],
      { input: `${OWNER.password}\n` },
    )
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toBe(
      `Created the first user admin (owner).\nLogged in to ${server.url} as admin\n`,
    )
    // The password was taken without its newline.
    const login = await new ApiClient({ url: server.url }).login(OWNER.username, OWNER.password)
    expect(login.user.username).toBe('admin')

    const again = await runCli(server.env, [...loginArgs(), '--password-stdin'], {
      input: `${OWNER.password}\r\n`,
    })
    expect([again.exitCode, again.stderr]).toEqual([0, ''])
  })

  it('should document --password-stdin in --help', async () => {
    const r = await runCli(server.env, ['login', '--help'])
    expect(r.stdout).toMatch(/--password-stdin +read the password from\s+stdin/)
    expect(r.stdout).toMatch(/Examples:[\s\S]*\| coder-mesh login [^\n]*--password-stdin/)
  })

  it('should keep the mode of an existing config folder (1777) and save the file 0600', async () => {
    const user = await newCliUser()
    try {
      await mkdir(user.configDir)
      await chmod(user.configDir, 0o1777)
      const r = await runCli(user.env, [...loginArgs(), '--password-stdin'], {
        input: OWNER.password,
      })
      expect([r.exitCode, r.stderr]).toEqual([0, ''])
      expect((await stat(user.configDir)).mode & 0o7777).toBe(0o1777)
      expect((await stat(join(user.configDir, 'session.json'))).mode & 0o777).toBe(0o600)
      expect(await leftoverTemps(user.configDir)).toEqual([])
    } finally {
      await removeTree(user.home)
    }
  })

  it('should make a missing config folder 0700, with its missing parents', async () => {
    const user = await newCliUser()
    try {
      const deep = join(user.home, 'a', 'b', 'config')
      const env = { ...user.env, CODER_MESH_CONFIG_DIR: deep }
      const r = await runCli(env, [...loginArgs(), '--password-stdin'], { input: OWNER.password })
      expect([r.exitCode, r.stderr]).toEqual([0, ''])
      expect((await stat(deep)).mode & 0o777).toBe(0o700)
      expect((await savedSession(deep)).url).toBe(server.url)
    } finally {
      await removeTree(user.home)
    }
  })

  it('should keep the saved session after a failed login', async () => {
    const user = await newCliUser()
    try {
      const ok = await runCli(user.env, [...loginArgs(), '--password-stdin'], {
        input: OWNER.password,
      })
      expect(ok.exitCode, ok.stderr).toBe(0)
      const file = join(user.configDir, 'session.json')
      const before = await readFile(file, 'utf8')

      const wrong = await runCli(user.env, [...loginArgs(), '--password-stdin'], {
        input: 'wrong-password',
      })
      expectOneLineError(wrong, 'MESH_BAD_CREDENTIALS')
      expect(await readFile(file, 'utf8')).toBe(before)
      expect(await leftoverTemps(user.configDir)).toEqual([])
    } finally {
      await removeTree(user.home)
    }
  })

  it('should refuse a session.json that is a folder, naming it, and leave no temp file', async () => {
    const user = await newCliUser()
    try {
      const file = join(user.configDir, 'session.json')
      await mkdir(file, { recursive: true })
      const r = await runCli(user.env, [...loginArgs(), '--password-stdin'], {
        input: OWNER.password,
      })
      expectOneLineError(r, 'MESH_CONFIG_UNWRITABLE')
      expect(r.stderr).toContain(file)
      expect(r.stderr).toMatch(/is a folder, not a file/)
      expect(await readdir(user.configDir)).toEqual(['session.json'])

      const list = await runCli(user.env, ['list'])
      expectOneLineError(list, 'MESH_CONFIG_UNWRITABLE')
      expect(list.stderr).toContain(file)
    } finally {
      await removeTree(user.home)
    }
  })

  it('should refuse a config folder that is a file, or under one', async () => {
    const user = await newCliUser()
    try {
      const file = join(user.home, 'plain-file')
      await writeFile(file, 'x')
      for (const dir of [file, join(file, 'config')]) {
        const env = { ...user.env, CODER_MESH_CONFIG_DIR: dir }
        const r = await runCli(env, [...loginArgs(), '--password-stdin'], {
          input: OWNER.password,
        })
        expectOneLineError(r, 'MESH_CONFIG_UNWRITABLE')
        expect(r.stderr).toContain(`Cannot save the session in ${dir} (CODER_MESH_CONFIG_DIR)`)
        expect(r.stderr).toContain(
          dir === file ? ': it is a file, not a folder.' : `: ${file} is a file, not a folder.`,
        )
      }
    } finally {
      await removeTree(user.home)
    }
  })

  it('should refuse a config folder it cannot write, naming it, and leave no temp file', async () => {
    const dir = await unwritableDir()
    if (dir === undefined) return
    try {
      const user = await newCliUser({ CODER_MESH_CONFIG_DIR: dir })
      try {
        const r = await runCli(user.env, [...loginArgs(), '--password-stdin'], {
          input: OWNER.password,
        })
        expectOneLineError(r, 'MESH_CONFIG_UNWRITABLE')
        expect(r.stderr).toContain(`Cannot save the session in ${dir}`)
        expect(r.stderr).toMatch(/permission denied|read-only/)
        expect(await leftoverTemps(dir)).toEqual([])
      } finally {
        await removeTree(user.home)
      }
    } finally {
      if (dir !== '/sys') await removeTree(dirname(dir))
    }
  })
})

/**
 * A folder this process cannot create files in: a 0500 folder, or for root
 * (who ignores modes) /sys; undefined when there is none.
 */
async function unwritableDir(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) {
    const base = await mkdtemp(join(tmpdir(), 'coder-mesh-ro-'))
    const dir = join(base, 'config')
    await mkdir(dir, { mode: 0o500 })
    await chmod(dir, 0o500)
    return dir
  }
  try {
    await access('/sys')
    await writeFile('/sys/.coder-mesh-probe', 'x')
    return undefined
  } catch {
    return (await stat('/sys').catch(() => undefined))?.isDirectory() === true ? '/sys' : undefined
  }
}

function closeTcp(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}
