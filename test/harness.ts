/**
 * End-to-end helpers: a real `coder-mesh server` process on loopback with a
 * temporary data dir, the real CLI through bin/coder-mesh, and the real
 * OpenSSH client with the CLI as its ProxyCommand.
 */
import pty, { type IPty } from '@lydell/node-pty'
import { execa, type ResultPromise } from 'execa'
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
export const BIN = join(ROOT, 'bin', 'coder-mesh')

export const OWNER = {
  username: 'admin',
  email: 'admin@example.test',
  password: 'correct-horse-42',
}

export interface CliResult {
  exitCode: number
  stdout: string
  stderr: string
}

export interface TestServer {
  url: string
  dataDir: string
  configDir: string
  home: string
  /** The environment `cli` runs the CLI with (HOME and config dir of this server's user). */
  env: Record<string, string>
  process: ResultPromise
  /** Runs the CLI as the logged-in user of this server. */
  cli(args: string[], options?: { input?: string; timeout?: number }): Promise<CliResult>
  /** Runs OpenSSH against `coder-mesh.<name>` with the CLI as ProxyCommand. */
  ssh(name: string, command: string, options?: { input?: string }): Promise<CliResult>
  /** Kills the server (SIGKILL when `hard`) and starts it again on the same port and data. */
  restart(hard?: boolean): Promise<void>
  stop(): Promise<void>
}

/** A clean environment: no session or URL leaks in from the developer's shell. */
export function cleanEnv(home: string, configDir: string): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: home,
    CODER_MESH_CONFIG_DIR: configDir,
    CODER_MESH_LOG_LEVEL: process.env.CODER_MESH_LOG_LEVEL ?? 'warn',
    LANG: 'C.UTF-8',
  }
  return env
}

/**
 * The URL a starting `coder-mesh server` prints ("listening on URL"); rejects
 * when it exits first or says nothing within 30 s.
 */
export function serverUrl(child: ResultPromise): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let seen = ''
    const timer = setTimeout(() => reject(new Error(`server did not start: ${seen}`)), 30_000)
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
      const match = /listening on (http:\/\/\S+)/.exec(seen)
      if (match?.[1] !== undefined) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    child.stderr?.on('data', (chunk: Buffer) => {
      if (process.env.E2E_VERBOSE !== undefined) process.stderr.write(chunk)
    })
    void child.then((r) => {
      clearTimeout(timer)
      reject(new Error(`server exited ${r.exitCode}: ${seen}`))
    })
  })
}

async function spawnServer(
  dataDir: string,
  env: Record<string, string>,
  address: string,
): Promise<{ url: string; process: ResultPromise }> {
  const child = execa(BIN, ['server', '--address', address, '--data-dir', dataDir], {
    env,
    extendEnv: false,
    reject: false,
    buffer: false,
    stdin: 'ignore',
  })

  return { url: await serverUrl(child), process: child }
}

export async function startTestServer(): Promise<TestServer> {
  const base = await mkdtemp(join(tmpdir(), 'coder-mesh-e2e-'))
  const dataDir = join(base, 'data')
  const configDir = join(base, 'config')
  const home = join(base, 'home')
  const env = cleanEnv(home, configDir)

  let { url, process: child } = await spawnServer(dataDir, env, '127.0.0.1:0')

  const cli = async (
    args: string[],
    options: { input?: string; timeout?: number } = {},
  ): Promise<CliResult> => {
    const r = await execa(BIN, args, {
      env,
      extendEnv: false,
      reject: false,
      input: options.input ?? '',
      timeout: options.timeout ?? 180_000,
    })
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
  }

  const ssh = async (
    name: string,
    command: string,
    options: { input?: string } = {},
  ): Promise<CliResult> => {
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
        `coder-mesh.${name}`,
        command,
      ],
      { env, extendEnv: false, reject: false, input: options.input ?? '', timeout: 60_000 },
    )
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
  }

  const server: TestServer = {
    url,
    dataDir,
    configDir,
    home,
    env,
    process: child,
    cli,
    ssh,
    async restart(hard = false) {
      child.kill(hard ? 'SIGKILL' : 'SIGTERM')
      await child
      const address = new URL(url).host
      ;({ url, process: child } = await spawnServer(dataDir, env, address))
      server.process = child
    },
    async stop() {
      child.kill('SIGTERM')
      await child
    },
  }
  return server
}

export async function loginOwner(server: TestServer): Promise<void> {
  const r = await server.cli([
    'login',
    server.url,
    '--username',
    OWNER.username,
    '--password',
    OWNER.password,
    '--first-user-email',
    OWNER.email,
  ])
  if (r.exitCode !== 0) throw new Error(`login failed: ${r.stderr}`)
}

/** Pids of live processes whose environment or cwd points into `dir`. */
export async function processesUnder(dir: string): Promise<number[]> {
  const found: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    if (pid === process.pid) continue
    try {
      const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '')
      const environ = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '')
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
      if (stat.includes(') Z ')) continue
      if (cwd.startsWith(dir) || environ.includes(`CODER_MESH_AGENT_DIR=${dir}`)) found.push(pid)
    } catch {
      // The process ended while we looked.
    }
  }
  return found
}

/**
 * Ends a test server that built `workspaces`: deletes them (Terraform
 * destroys what they made), stops the server, kills any agent left behind
 * and removes its folders. Safe on a server that never started.
 */
export async function discardTestServer(
  server: TestServer | undefined,
  workspaces: string[],
): Promise<void> {
  if (server === undefined) return
  try {
    for (const name of workspaces) await server.cli(['delete', name, '-y'])
  } finally {
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(dirname(server.dataDir))
  }
}

/** Waits until `check` returns true, polling; throws after `timeout` ms. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeout = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeout
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 250))
  }
  throw new Error(`timed out waiting for ${what}`)
}

export async function removeTree(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}

/** A CLI user of their own: a fresh HOME and config dir, and a clean environment. */
export interface CliUser {
  home: string
  configDir: string
  env: Record<string, string>
}

/** A new CLI user in a fresh temporary folder; `extra` is added to the clean environment. */
export async function newCliUser(extra: Record<string, string> = {}): Promise<CliUser> {
  const home = await mkdtemp(join(tmpdir(), 'coder-mesh-cli-'))
  const configDir = join(home, 'config')
  return { home, configDir, env: { ...cleanEnv(home, configDir), ...extra } }
}

export interface RunOptions {
  input?: string | Buffer
  timeout?: number
  cwd?: string
}

/**
 * Runs bin/coder-mesh with exactly `env` (nothing from this process's
 * environment) and returns its output byte for byte, final newline included.
 */
export async function runCli(
  env: Record<string, string>,
  args: string[],
  options: RunOptions = {},
): Promise<CliResult> {
  const r = await execa(BIN, args, {
    env,
    extendEnv: false,
    reject: false,
    input: options.input ?? '',
    timeout: options.timeout ?? 180_000,
    cwd: options.cwd,
    stripFinalNewline: false,
  })
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}

/** The session `coder-mesh login` saved in `configDir`. */
export async function savedSession(
  configDir: string,
): Promise<{ url: string; sessionToken: string }> {
  return JSON.parse(await readFile(join(configDir, 'session.json'), 'utf8')) as {
    url: string
    sessionToken: string
  }
}

/** The CLI running on a pseudo-terminal, with everything it has written so far. */
export interface TerminalRun {
  term: IPty
  exited: Promise<number>
  screen(): string
  /**
   * Waits until the screen holds `text` (or matches it); throws, showing
   * the screen, after `timeout` ms.
   */
  waitFor(text: string | RegExp, timeout?: number): Promise<void>
}

export function runOnTerminal(
  env: Record<string, string>,
  args: string[],
  size: { cols: number; rows: number } = { cols: 100, rows: 30 },
): TerminalRun {
  const term = pty.spawn(BIN, args, { ...size, env })
  let screen = ''
  term.onData((d) => {
    screen += d
  })
  const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
  return {
    term,
    exited,
    screen: () => screen,
    async waitFor(text, timeout = 30_000) {
      const deadline = Date.now() + timeout
      const found = (): boolean =>
        typeof text === 'string' ? screen.includes(text) : text.test(screen)
      while (!found()) {
        if (Date.now() > deadline) {
          throw new Error(`no ${String(text)} on the terminal: ${JSON.stringify(screen)}`)
        }
        await new Promise((r) => setTimeout(r, 50))
      }
    },
  }
}

/**
 * Writes an OpenSSH client config in `dir` reaching every `coder-mesh.NAME`
 * through the CLI as ProxyCommand (host keys not kept, no prompts), for
 * `ssh -F`, `scp -F`, `sftp -F` and `rsync -e 'ssh -F ...'`; returns its path.
 */
export async function writeSshConfig(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true })
  const file = join(dir, 'ssh_config')
  const config = [
    'Host coder-mesh.*',
    `  ProxyCommand '${BIN}' ssh --stdio %h`,
    '  StrictHostKeyChecking no',
    '  UserKnownHostsFile /dev/null',
    '  LogLevel ERROR',
    '  BatchMode yes',
    '',
  ].join('\n')
  await writeFile(file, config, { mode: 0o600 })
  return file
}

/** A running workspace of the shipped `local` template, for OpenSSH tool tests. */
export interface WorkspaceFixture {
  server: TestServer
  /** The OpenSSH host name: `coder-mesh.NAME`. */
  host: string
  /** The client config from writeSshConfig. */
  sshConfig: string
  /** Runs an OpenSSH tool (ssh, scp, sftp, rsync, ...) with the server user's environment. */
  tool(
    file: string,
    args: string[],
    options?: RunOptions & { env?: Record<string, string> },
  ): Promise<CliResult>
  /** Deletes the workspace, stops the server, removes every file. */
  close(): Promise<void>
}

/** Starts a server, pushes the local template and creates workspace `name` on it. */
export async function startWorkspaceFixture(name: string): Promise<WorkspaceFixture> {
  const server = await startTestServer()
  const close = async (): Promise<void> => {
    await server.cli(['delete', name, '-y'])
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(join(server.dataDir, '..'))
  }
  try {
    await loginOwner(server)
    const push = await server.cli(['templates', 'push', 'local'])
    if (push.exitCode !== 0) throw new Error(`templates push: ${push.stderr}`)
    const create = await server.cli(['create', name, '--template', 'local', '-y'])
    if (create.exitCode !== 0) throw new Error(`create: ${create.stderr}`)
    // Until the agent registers, the CLI says "Waiting for the agent..." on stderr.
    await waitFor('the agent to connect', async () => {
      const show = await server.cli(['show', name, '-o', 'json'])
      return show.exitCode === 0 && JSON.parse(show.stdout)?.agent?.connected === true
    })
  } catch (err) {
    await close()
    throw err
  }
  const sshConfig = await writeSshConfig(server.home)
  return {
    server,
    host: `coder-mesh.${name}`,
    sshConfig,
    async tool(file, args, options = {}) {
      const r = await execa(file, args, {
        env: { ...server.env, ...options.env },
        extendEnv: false,
        reject: false,
        input: options.input ?? '',
        timeout: options.timeout ?? 120_000,
        cwd: options.cwd,
      })
      return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
    },
    close,
  }
}

/** The folder the shipped `local` template keeps a workspace (and its agent.pid) in. */
export function localWorkspaceDir(server: TestServer, workspaceId: string): string {
  return join(server.dataDir, 'workspaces', workspaceId)
}

/** A TCP port free right now on 127.0.0.1 (for tools that need a number up front). */
export async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve)
    server.once('error', reject)
  })
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}
