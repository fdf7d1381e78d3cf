/**
 * The CLI as users run it (bin/coder-mesh in a child process), against a
 * real `coder-mesh server` on loopback: real logins, template pushes and
 * Terraform builds of small templates, and one workspace of the shipped
 * `local` template for an agent's details.
 */
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Command } from 'commander'
import { ApiClient } from '../sdk/api-client.ts'
import type { Workspace } from '../sdk/api-types.ts'
import {
  loginOwner,
  newCliUser,
  processesUnder,
  removeTree,
  runCli,
  runOnTerminal,
  savedSession,
  startTestServer,
  waitFor,
  type CliUser,
  type TestServer,
} from '../test/harness.ts'
import { buildProgram, packageVersion } from './main.ts'

const OWNER = ['--username', 'admin', '--password', 'correct-horse-42']

/**
 * Prints which build runs, the `cpu` parameter and, when the version has
 * it, the bytes of modules/net/net.tf as the build sees them. Replaced on
 * every apply, so every start, stop and restart prints its line.
 */
const ECHO_TEMPLATE = `
variable "coder_mesh_transition" {
  type = string
}

variable "cpu" {
  type    = string
  default = "1"
}

resource "terraform_data" "step" {
  triggers_replace = timestamp()

  provisioner "local-exec" {
    working_dir = path.module
    command     = "echo build-\${var.coder_mesh_transition} cpu=\${var.cpu}; if [ -f modules/net/net.tf ]; then od -An -tx1 modules/net/net.tf; fi"
  }
}
`

const FAILING_TEMPLATE = `
resource "terraform_data" "setup" {
  provisioner "local-exec" {
    command = "echo step-start; exit 3"
  }
}
`

function commandPaths(command: Command, prefix: string[] = []): string[][] {
  return command.commands.flatMap((sub) => {
    const path = [...prefix, sub.name()]
    return [path, ...commandPaths(sub, path)]
  })
}

/** `fn` over `items`, at most `limit` at a time; results in the order of `items`. */
async function mapLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      results[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return results
}

function expectOneLineError(stderr: string, code: string): void {
  expect(stderr).toMatch(new RegExp(`^error: .*\\(${code}\\)\\n$`))
  expect(stderr).not.toMatch(/\n\s+at /)
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
}

async function stopServer(server: TestServer | undefined): Promise<void> {
  if (server === undefined) return
  await server.stop()
  for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
  await removeTree(dirname(server.dataDir))
}

// Many CLI runs per test, on a machine shared with other test runs.
const SLOW = { timeout: 180_000 }

describe('coder-mesh without a server', SLOW, () => {
  let cli: CliUser

  beforeAll(async () => {
    cli = await newCliUser()
  })

  afterAll(async () => {
    if (cli !== undefined) await removeTree(cli.home)
  })

  it('should print the package version', async () => {
    const r = await runCli(cli.env, ['--version'])
    expect(r).toEqual({ exitCode: 0, stdout: `${packageVersion()}\n`, stderr: '' })
  })

  // One process per command (commander prints one help per run): two at a
  // time, with room for a loaded machine.
  it('should show an Example in the --help of every command', { timeout: 600_000 }, async () => {
    const paths = [[], ...commandPaths(buildProgram())]
    expect(paths.length).toBeGreaterThan(12)
    const results = await mapLimited(paths, 2, (path) => runCli(cli.env, [...path, '--help']))
    for (const [i, r] of results.entries()) {
      const name = paths[i]!.join(' ')
      expect(r.exitCode, name).toBe(0)
      expect(r.stdout, name).toMatch(/Example/)
    }
  })

  it('should show -o and -y where the contract asks for them', async () => {
    for (const path of [['list'], ['show'], ['templates', 'list'], ['templates', 'versions']]) {
      expect((await runCli(cli.env, [...path, '--help'])).stdout).toMatch(/-o, --output/)
    }
    for (const path of [['create'], ['start'], ['stop'], ['restart'], ['delete']]) {
      expect((await runCli(cli.env, [...path, '--help'])).stdout).toMatch(/-y, --yes/)
    }
  })

  it('should exit non-zero on a bad flag, a bad choice or an unknown command', async () => {
    for (const args of [['list', '--bogus'], ['list', '-o', 'yaml'], ['frobnicate'], ['show']]) {
      const r = await runCli(cli.env, args)
      expect(r.exitCode, args.join(' ')).not.toBe(0)
      expect(r.stderr, args.join(' ')).toMatch(/^error: /)
    }
  })

  it('should say in one line that the user is not logged in', async () => {
    const r = await runCli(cli.env, ['list'])
    expect(r.exitCode).toBe(1)
    expect(r.stdout).toBe('')
    expectOneLineError(r.stderr, 'MESH_NOT_LOGGED_IN')
    expect(r.stderr).toMatch(/coder-mesh login URL/)
  })

  it('should say in one line that the server cannot be reached', async () => {
    const env = { ...cli.env, CODER_MESH_URL: 'http://127.0.0.1:1', CODER_MESH_SESSION_TOKEN: 'x' }
    const r = await runCli(env, ['list'])
    expect(r.exitCode).toBe(1)
    expectOneLineError(r.stderr, 'MESH_SERVER_UNREACHABLE')

    const verbose = await runCli(env, ['list', '--verbose'])
    expect(verbose.stderr).toMatch(/\n {2}detail: fetch failed/)
  })

  it('should refuse to delete without -y when there is no terminal to ask on', async () => {
    const env = { ...cli.env, CODER_MESH_URL: 'http://127.0.0.1:1', CODER_MESH_SESSION_TOKEN: 'x' }
    const r = await runCli(env, ['delete', 'dev'])
    expect(r.exitCode).toBe(1)
    expectOneLineError(r.stderr, 'MESH_BAD_ARGUMENT')
    expect(r.stderr).toMatch(/pass -y/)
  })

  it('should refuse a malformed --parameter', async () => {
    const r = await runCli(cli.env, ['create', 'dev', '--template', 'local', '--parameter', 'nope'])
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/NAME=VALUE/)
  })
})

describe('coder-mesh against a server', SLOW, () => {
  let server: TestServer
  let files: string

  beforeAll(async () => {
    server = await startTestServer()
    files = join(dirname(server.dataDir), 'files')
  })

  afterAll(async () => {
    await stopServer(server)
  })

  const cli = (args: string[], options?: { cwd?: string }) => runCli(server.env, args, options)

  it('should run the server with two malloc arenas (bin/coder-mesh)', async () => {
    const environ = await readFile(`/proc/${server.process.pid}/environ`, 'utf8')
    expect(environ.split('\0')).toContain('MALLOC_ARENA_MAX=2')
  })

  describe('without a terminal', () => {
    it('should need --first-user-email and --password to set up a new server without a terminal', async () => {
      const noEmail = await cli(['login', server.url, ...OWNER])
      expect(noEmail.exitCode).toBe(1)
      expectOneLineError(noEmail.stderr, 'MESH_BAD_ARGUMENT')
      expect(noEmail.stderr).toMatch(/--first-user-email/)

      const noPassword = await cli([
        'login',
        server.url,
        '--username',
        'admin',
        '--first-user-email',
        'admin@example.test',
      ])
      expect(noPassword.exitCode).toBe(1)
      expect(noPassword.stderr).toMatch(/--password/)
      expect(await new ApiClient({ url: server.url }).firstUserStatus()).toEqual({
        hasFirstUser: false,
      })
    })

    it('should create the first user, log in and keep the session in a 0600 file', async () => {
      const r = await cli([
        'login',
        `${server.url}/`,
        ...OWNER,
        '--first-user-email',
        'admin@example.test',
      ])
      expect(r.stderr).toBe('')
      expect(r.exitCode).toBe(0)
      expect(r.stdout).toMatch(/Created the first user admin/)
      expect(r.stdout).toMatch(new RegExp(`Logged in to ${server.url} as admin\\n$`))

      const file = join(server.configDir, 'session.json')
      expect((await stat(file)).mode & 0o777).toBe(0o600)
      expect((await stat(server.configDir)).mode & 0o777).toBe(0o700)
      const session = JSON.parse(await readFile(file, 'utf8'))
      expect(session).toEqual({ url: server.url, sessionToken: expect.stringMatching(/^cms_/) })

      const me = await new ApiClient({ url: server.url, token: session.sessionToken }).me()
      expect(me).toMatchObject({ username: 'admin', email: 'admin@example.test' })
      expect(me.roles).toContain('owner')
    })

    it('should log in again without creating a user, and refuse a wrong password in one line', async () => {
      const again = await cli(['login', server.url, ...OWNER])
      expect(again.exitCode).toBe(0)
      expect(again.stdout).not.toMatch(/Created/)

      const wrong = await cli(['login', server.url, '--username', 'admin', '--password', 'nope'])
      expect(wrong.exitCode).toBe(1)
      expectOneLineError(wrong.stderr, 'MESH_BAD_CREDENTIALS')
    })

    it('should push a folder recursively, leaving out .terraform, .git and state', async () => {
      const dir = join(files, 'tpl')
      await mkdir(join(dir, 'modules', 'net'), { recursive: true })
      await mkdir(join(dir, '.terraform', 'providers'), { recursive: true })
      await mkdir(join(dir, '.git'), { recursive: true })
      await writeFile(join(dir, 'main.tf'), ECHO_TEMPLATE)
      await writeFile(join(dir, 'modules', 'net', 'net.tf'), Buffer.from([0, 1, 2, 255]))
      await writeFile(join(dir, '.terraform', 'providers', 'p'), 'x')
      await writeFile(join(dir, '.git', 'HEAD'), 'x')
      await writeFile(join(dir, 'terraform.tfstate'), '{}')
      await writeFile(join(dir, 'terraform.tfstate.backup'), '{}')

      const r = await cli(['templates', 'push', 'mytpl', '-d', dir, '-m', 'first'])
      expect(r.stderr).toBe('')
      expect(r.exitCode).toBe(0)
      expect(r.stdout).toBe('Template mytpl version 1 pushed (2 files)\n')

      const versions = await cli(['templates', 'versions', 'mytpl', '-o', 'json'])
      expect(JSON.parse(versions.stdout)).toEqual([
        expect.objectContaining({
          version: 1,
          message: 'first',
          files: ['main.tf', 'modules/net/net.tf'],
        }),
      ])
    })

    it('should create a workspace, streaming the build log, with the pushed bytes and parameters', async () => {
      const r = await cli(['create', 'dev', '--template', 'mytpl', '--parameter', 'cpu=2', '-y'])
      expect(r.stderr).toBe('')
      expect(r.exitCode).toBe(0)
      // The build saw the parameter and the binary file exactly as pushed.
      expect(r.stdout).toMatch(/build-start cpu=2\n/)
      expect(r.stdout).toMatch(/ 00 01 02 ff\n/)
      expect(r.stdout).toMatch(
        /build-start cpu=2\n[\s\S]*\nApply complete! Resources: 1 added[^\n]*\n(?:[^\n]*\n)*Workspace dev is running\n$/,
      )
    })

    it('should print the log and a one-line error for a failed build', async () => {
      const dir = join(files, 'boom')
      await mkdir(dir, { recursive: true })
      await writeFile(join(dir, 'main.tf'), FAILING_TEMPLATE)
      const push = await cli(['templates', 'push', 'boom', '-d', dir])
      expect(push.exitCode, push.stderr).toBe(0)

      const r = await cli(['create', 'b1', '--template', 'boom', '-y'])
      expect(r.exitCode).toBe(1)
      expect(r.stdout).toMatch(/step-start\n/)
      // Terraform's own report of the failing step is in the log.
      expect(r.stdout).toMatch(/exit status 3/)
      expectOneLineError(r.stderr, 'MESH_BUILD_FAILED')
      expect(r.stderr).toMatch(/^error: Build failed: terraform apply/)
    })

    it('should refuse a bad workspace name in one line', async () => {
      const r = await cli(['create', 'Bad_Name', '--template', 'mytpl', '-y'])
      expect(r.exitCode).toBe(1)
      expectOneLineError(r.stderr, 'MESH_INVALID_NAME')
    })

    it('should push the current folder when -d is not given and no example has the name', async () => {
      const dir = join(files, 'here')
      await mkdir(dir, { recursive: true })
      await writeFile(join(dir, 'main.tf'), `# v2\n${ECHO_TEMPLATE}`)
      const r = await cli(['templates', 'push', 'mytpl'], { cwd: dir })
      expect(r.exitCode, r.stderr).toBe(0)
      expect(r.stdout).toBe('Template mytpl version 2 pushed (1 file)\n')

      const versions = await cli(['templates', 'versions', 'mytpl', '-o', 'json'])
      expect(JSON.parse(versions.stdout)[1]).toMatchObject({ version: 2, files: ['main.tf'] })
    })

    it('should list templates and their versions as a table and as JSON', async () => {
      const table = await cli(['templates', 'list'])
      expect(table.stdout).toMatch(/^NAME\s+ACTIVE VERSION\s+VERSIONS\s+UPDATED\n/)
      expect(table.stdout).toMatch(/\nmytpl\s+2\s+2\s+/)

      const json = await cli(['templates', 'list', '-o', 'json'])
      const templates = JSON.parse(json.stdout)
      expect(templates).toHaveLength(2)
      expect(templates).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ name: 'mytpl', activeVersion: 2 }),
          expect.objectContaining({ name: 'boom', activeVersion: 1 }),
        ]),
      )

      const versions = await cli(['templates', 'versions', 'mytpl', '-o', 'json'])
      expect(JSON.parse(versions.stdout).map((v: { version: number }) => v.version)).toEqual([1, 2])
    })

    it('should list and show workspaces', async () => {
      const table = await cli(['list'])
      expect(table.exitCode).toBe(0)
      expect(table.stdout).toMatch(/^NAME\s+TEMPLATE\s+STATUS\s+AGENT\s+LAST BUILD\n/)
      expect(table.stdout).toMatch(
        /\ndev\s+mytpl\s+running\s+—\s+#1 start succeeded, (just now|\d+s ago|\d+m ago)\n/,
      )

      const json = await cli(['list', '-o', 'json'])
      const names = JSON.parse(json.stdout).map((w: { name: string }) => w.name)
      expect(names.sort()).toEqual(['b1', 'dev'])

      const showJson = await cli(['show', 'dev', '-o', 'json'])
      expect(JSON.parse(showJson.stdout)).toMatchObject({ name: 'dev', status: 'running' })
      const show = await cli(['show', 'dev'])
      expect(show.stdout).toMatch(/^Name: +dev$/m)
      expect(show.stdout).toMatch(/^Agent: +none registered$/m)

      const missing = await cli(['show', 'nosuch'])
      expect(missing.exitCode).toBe(1)
      expectOneLineError(missing.stderr, 'MESH_WORKSPACE_NOT_FOUND')
    })

    it("should list another user's or everyone's workspaces with an OWNER column", async () => {
      const all = await cli(['list', '--all'])
      expect(all.stdout).toMatch(/^OWNER\s+NAME\s+TEMPLATE\s+STATUS/)
      expect(all.stdout).toMatch(/\nadmin\s+dev\s+mytpl\s+running/)
      const mine = JSON.parse((await cli(['list', '--owner', 'admin', '-o', 'json'])).stdout)
      expect(mine.map((w: { owner: string }) => w.owner)).toEqual(['admin', 'admin'])

      const both = await cli(['list', '--all', '--owner', 'admin'])
      expect(both.exitCode).toBe(1)
      expectOneLineError(both.stderr, 'MESH_BAD_ARGUMENT')
    })

    it("should show a running agent's peer ID and every address, one a line", async () => {
      const push = await cli(['templates', 'push', 'local'])
      expect(push.exitCode, push.stderr).toBe(0)
      const create = await cli(['create', 'withagent', '--template', 'local', '-y'])
      expect(create.exitCode, create.stderr).toBe(0)
      try {
        let workspace: Workspace | undefined
        await waitFor('the agent to register', async () => {
          const r = await cli(['show', 'withagent', '-o', 'json'])
          workspace = JSON.parse(r.stdout) as Workspace
          return workspace.agent?.connected === true && workspace.agent.addrs.length > 0
        })
        const agent = workspace!.agent!

        const show = await cli(['show', 'withagent'])
        expect(show.stdout).toMatch(/^Agent: +connected, version \S+, seen /m)
        expect(show.stdout).toMatch(new RegExp(`^Agent peer ID: +${agent.peerId}$`, 'm'))
        // The first address beside the label, each further one on a line of its own.
        const addrs = agent.addrs.map(escapeRegExp).join('\\n +')
        expect(show.stdout).toMatch(new RegExp(`^Agent addresses: +${addrs}\\n`, 'm'))

        const list = await cli(['list'])
        // The agent's lifecycle state follows: "connected, ready" once its startup script ran.
        expect(list.stdout).toMatch(
          /\nwithagent\s+local\s+running\s+connected(, [a-z ]+)?\s+#1 start/,
        )
      } finally {
        const del = await cli(['delete', 'withagent', '-y'])
        expect(del.exitCode, del.stderr).toBe(0)
      }
      await waitFor('the agent to exit', async () => {
        return (await processesUnder(server.dataDir)).length === 0
      })
    })

    it('should stop, start, restart and delete a workspace', async () => {
      const stop = await cli(['stop', 'dev', '-y'])
      expect([stop.exitCode, stop.stderr]).toEqual([0, ''])
      expect(stop.stdout).toMatch(/build-stop cpu=2\n[\s\S]*\nWorkspace dev is stopped\n$/)
      const stopped = await cli(['show', 'dev', '-o', 'json'])
      expect(JSON.parse(stopped.stdout)).toMatchObject({ status: 'stopped' })

      const start = await cli(['start', 'dev'])
      expect([start.exitCode, start.stderr]).toEqual([0, ''])
      expect(start.stdout).toMatch(/build-start cpu=2\n[\s\S]*\nWorkspace dev is running\n$/)

      const restart = await cli(['restart', 'dev'])
      expect([restart.exitCode, restart.stderr]).toEqual([0, ''])
      expect(restart.stdout).toMatch(
        /build-stop cpu=2\n[\s\S]*build-start cpu=2\n[\s\S]*\nWorkspace dev is running\n$/,
      )

      const refused = await cli(['delete', 'dev'])
      expect(refused.exitCode).toBe(1)
      expect((await cli(['show', 'dev'])).exitCode).toBe(0)

      const del = await cli(['delete', 'dev', '-y'])
      expect([del.exitCode, del.stderr]).toEqual([0, ''])
      expect(del.stdout).toMatch(/\nWorkspace dev deleted\n$/)
      const gone = await cli(['show', 'dev'])
      expectOneLineError(gone.stderr, 'MESH_WORKSPACE_NOT_FOUND')
    })

    it('should take the URL and token from the environment over the session file', async () => {
      const env = { ...server.env, CODER_MESH_SESSION_TOKEN: 'cms_wrong' }
      const r = await runCli(env, ['list'])
      expect(r.exitCode).toBe(1)
      expectOneLineError(r.stderr, 'MESH_UNAUTHENTICATED')

      const { sessionToken } = await savedSession(server.configDir)
      const other = await newCliUser({
        CODER_MESH_URL: server.url,
        CODER_MESH_SESSION_TOKEN: sessionToken,
      })
      try {
        const ok = await runCli(other.env, ['list', '-o', 'json'])
        expect(ok.exitCode, ok.stderr).toBe(0)
        expect(JSON.parse(ok.stdout).map((w: { name: string }) => w.name)).toEqual(['b1'])
      } finally {
        await removeTree(other.home)
      }
    })

    it('should forget the session on logout', async () => {
      const { sessionToken } = await savedSession(server.configDir)
      const r = await cli(['logout'])
      expect(r.exitCode).toBe(0)
      const after = await cli(['list'])
      expectOneLineError(after.stderr, 'MESH_NOT_LOGGED_IN')

      // The server forgot it too.
      const env = {
        ...server.env,
        CODER_MESH_URL: server.url,
        CODER_MESH_SESSION_TOKEN: sessionToken,
      }
      const old = await runCli(env, ['list'])
      expectOneLineError(old.stderr, 'MESH_UNAUTHENTICATED')
    })
  })

  describe('on a terminal', () => {
    it('should ask for the first user and hide the password', async () => {
      // A server of its own: the first user of the shared one exists.
      const fresh = await startTestServer()
      try {
        const run = runOnTerminal(fresh.env, ['login', fresh.url])
        await run.waitFor('Username')
        run.term.write('alice\r')
        await run.waitFor('Email')
        run.term.write('alice@example.test\r')
        await run.waitFor('Password for the first user')
        run.term.write('sup3r-secret-pw\r')
        await run.waitFor('Password again')
        run.term.write('sup3r-secret-pw\r')
        expect(await run.exited).toBe(0)
        expect(run.screen()).toMatch(/Logged in to .* as alice/)
        expect(run.screen()).not.toMatch(/sup3r-secret-pw/)

        const login = await new ApiClient({ url: fresh.url }).login('alice', 'sup3r-secret-pw')
        expect(login.user).toMatchObject({ username: 'alice', email: 'alice@example.test' })
      } finally {
        await stopServer(fresh)
      }
    })

    it('should ask before deleting and stop on no', async () => {
      await loginOwner(server)
      const create = await cli(['create', 'keep', '--template', 'mytpl', '-y'])
      expect(create.exitCode, create.stderr).toBe(0)

      const run = runOnTerminal(server.env, ['delete', 'keep'])
      await run.waitFor('[y/N]')
      run.term.write('n\r')
      expect(await run.exited).toBe(1)
      expect(run.screen()).toMatch(/Canceled/)
      const show = await cli(['show', 'keep', '-o', 'json'])
      expect(JSON.parse(show.stdout)).toMatchObject({ name: 'keep', status: 'running' })
    })
  })
})
