/**
 * The CLI as users run it (bin/coder-mesh in a child process), against a
 * small fake coordinator. End-to-end runs against the real server live in
 * test/.
 */
import pty from '@lydell/node-pty'
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Command } from 'commander'
import { buildProgram, packageVersion } from './main.ts'
import { startFakeCoordinator, type FakeCoordinator } from './testing/fake-coordinator.ts'
import { BIN, cliEnv, runCli, type CliEnv } from './testing/run-cli.ts'

const OWNER = ['--username', 'admin', '--password', 'correct-horse-42']

function commandPaths(command: Command, prefix: string[] = []): string[][] {
  return command.commands.flatMap((sub) => {
    const path = [...prefix, sub.name()]
    return [path, ...commandPaths(sub, path)]
  })
}

function expectOneLineError(stderr: string, code: string): void {
  expect(stderr).toMatch(new RegExp(`^error: .*\\(${code}\\)\\n$`))
  expect(stderr).not.toMatch(/\n\s+at /)
}

describe('coder-mesh without a server', () => {
  let cli: CliEnv

  beforeAll(async () => {
    cli = await cliEnv()
  })

  afterAll(async () => {
    await rm(cli.home, { recursive: true, force: true })
  })

  it('should print the package version', async () => {
    const r = await runCli(cli.env, ['--version'])
    expect(r).toEqual({ exitCode: 0, stdout: `${packageVersion()}\n`, stderr: '' })
  })

  it('should show an Example in the --help of every command', async () => {
    const paths = [[], ...commandPaths(buildProgram())]
    expect(paths.length).toBeGreaterThan(12)
    for (const path of paths) {
      const r = await runCli(cli.env, [...path, '--help'])
      expect(r.exitCode, path.join(' ')).toBe(0)
      expect(r.stdout, path.join(' ')).toMatch(/Example/)
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

describe('coder-mesh against a coordinator', () => {
  let fake: FakeCoordinator
  let cli: CliEnv

  beforeAll(async () => {
    fake = await startFakeCoordinator()
    cli = await cliEnv()
  })

  afterAll(async () => {
    await fake?.close()
    await rm(cli.home, { recursive: true, force: true })
  })

  it('should need --first-user-email and --password to set up a new server without a terminal', async () => {
    const noEmail = await runCli(cli.env, ['login', fake.url, ...OWNER])
    expect(noEmail.exitCode).toBe(1)
    expectOneLineError(noEmail.stderr, 'MESH_BAD_ARGUMENT')
    expect(noEmail.stderr).toMatch(/--first-user-email/)

    const noPassword = await runCli(cli.env, [
      'login',
      fake.url,
      '--username',
      'admin',
      '--first-user-email',
      'admin@example.test',
    ])
    expect(noPassword.exitCode).toBe(1)
    expect(noPassword.stderr).toMatch(/--password/)
    expect(fake.users.size).toBe(0)
  })

  it('should create the first user, log in and keep the session in a 0600 file', async () => {
    const r = await runCli(cli.env, [
      'login',
      `${fake.url}/`,
      ...OWNER,
      '--first-user-email',
      'admin@example.test',
    ])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toMatch(new RegExp(`Logged in to ${fake.url} as admin\\n$`))
    expect(fake.users.get('admin')?.user.email).toBe('admin@example.test')

    const file = join(cli.configDir, 'session.json')
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    expect((await stat(cli.configDir)).mode & 0o777).toBe(0o700)
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({
      url: fake.url,
      sessionToken: fake.token,
    })
  })

  it('should log in again without creating a user, and refuse a wrong password in one line', async () => {
    const again = await runCli(cli.env, ['login', fake.url, ...OWNER])
    expect(again.exitCode).toBe(0)
    expect(again.stdout).not.toMatch(/Created/)

    const wrong = await runCli(cli.env, [
      'login',
      fake.url,
      '--username',
      'admin',
      '--password',
      'nope',
    ])
    expect(wrong.exitCode).toBe(1)
    expectOneLineError(wrong.stderr, 'MESH_BAD_CREDENTIALS')
  })

  it('should push a folder recursively, leaving out .terraform, .git and state', async () => {
    const dir = join(cli.home, 'tpl')
    await mkdir(join(dir, 'modules', 'net'), { recursive: true })
    await mkdir(join(dir, '.terraform', 'providers'), { recursive: true })
    await mkdir(join(dir, '.git'), { recursive: true })
    await writeFile(join(dir, 'main.tf'), 'resource "terraform_data" "x" {}\n')
    await writeFile(join(dir, 'modules', 'net', 'net.tf'), Buffer.from([0, 1, 2, 255]))
    await writeFile(join(dir, '.terraform', 'providers', 'p'), 'x')
    await writeFile(join(dir, '.git', 'HEAD'), 'x')
    await writeFile(join(dir, 'terraform.tfstate'), '{}')
    await writeFile(join(dir, 'terraform.tfstate.backup'), '{}')

    const r = await runCli(cli.env, ['templates', 'push', 'mytpl', '-d', dir, '-m', 'first'])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toBe('Template mytpl version 1 pushed (2 files)\n')

    const push = fake.pushes.at(-1)!
    expect(push.body.message).toBe('first')
    expect(push.body.files.map((f) => f.path)).toEqual(['main.tf', 'modules/net/net.tf'])
    expect(Buffer.from(push.body.files[1]!.content, 'base64')).toEqual(Buffer.from([0, 1, 2, 255]))
  })

  it('should push the current folder when -d is not given and no example has the name', async () => {
    const dir = join(cli.home, 'here')
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'main.tf'), '# v2\n')
    const r = await runCli(cli.env, ['templates', 'push', 'mytpl'], { cwd: dir })
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toBe('Template mytpl version 2 pushed (1 file)\n')
    expect(fake.pushes.at(-1)!.body.files.map((f) => f.path)).toEqual(['main.tf'])
  })

  it('should list templates and their versions as a table and as JSON', async () => {
    const table = await runCli(cli.env, ['templates', 'list'])
    expect(table.stdout).toMatch(/^NAME\s+ACTIVE VERSION\s+VERSIONS\s+UPDATED\nmytpl\s+2\s+2\s+/)

    const json = await runCli(cli.env, ['templates', 'list', '-o', 'json'])
    expect(JSON.parse(json.stdout)).toEqual([
      expect.objectContaining({ name: 'mytpl', activeVersion: 2 }),
    ])

    const versions = await runCli(cli.env, ['templates', 'versions', 'mytpl', '-o', 'json'])
    expect(JSON.parse(versions.stdout).map((v: { version: number }) => v.version)).toEqual([1, 2])
  })

  it('should create a workspace, streaming the build log', async () => {
    fake.nextBuild = {
      lines: ['Initializing...', 'Apply complete! Resources: 1 added.'],
      status: 'succeeded',
    }
    const r = await runCli(cli.env, [
      'create',
      'dev',
      '--template',
      'mytpl',
      '--parameter',
      'cpu=2',
      '-y',
    ])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toBe(
      'Initializing...\nApply complete! Resources: 1 added.\nWorkspace dev is running\n',
    )
  })

  it('should print the log and a one-line error for a failed build', async () => {
    fake.nextBuild = {
      lines: ['step-start', 'Error: local-exec provisioner error: exit status 3'],
      status: 'failed',
      error: 'terraform apply failed: exit status 3',
    }
    const r = await runCli(cli.env, ['create', 'b1', '--template', 'mytpl', '-y'])
    expect(r.exitCode).toBe(1)
    expect(r.stdout).toMatch(/step-start\n/)
    expectOneLineError(r.stderr, 'MESH_BUILD_FAILED')
    expect(r.stderr).toMatch(/Build failed: terraform apply failed: exit status 3/)
  })

  it('should refuse a bad workspace name in one line', async () => {
    const r = await runCli(cli.env, ['create', 'Bad_Name', '--template', 'mytpl', '-y'])
    expect(r.exitCode).toBe(1)
    expectOneLineError(r.stderr, 'MESH_INVALID_NAME')
  })

  it('should list and show workspaces', async () => {
    const table = await runCli(cli.env, ['list'])
    expect(table.exitCode).toBe(0)
    expect(table.stdout).toMatch(/^NAME\s+TEMPLATE\s+STATUS\s+AGENT\s+LAST BUILD\n/)
    expect(table.stdout).toMatch(/\ndev\s+mytpl\s+running\s+—\s+#\d+ start succeeded, just now\n/)

    const json = await runCli(cli.env, ['list', '-o', 'json'])
    const names = JSON.parse(json.stdout).map((w: { name: string }) => w.name)
    expect(names).toEqual(['dev', 'b1'])

    fake.workspaces.get('dev')!.agent = {
      peerId: '12D3KooWTestPeer',
      addrs: ['/ip4/127.0.0.1/tcp/4001', '/ip4/10.0.0.2/tcp/4001'],
      version: '0.1.0',
      connected: true,
      lastSeenAt: new Date().toISOString(),
    }
    const show = await runCli(cli.env, ['show', 'dev'])
    expect(show.stdout).toMatch(/^Name: +dev$/m)
    expect(show.stdout).toMatch(/^Agent peer ID: +12D3KooWTestPeer$/m)
    expect(show.stdout).toMatch(
      /^Agent addresses: +\/ip4\/127.0.0.1\/tcp\/4001\n +\/ip4\/10.0.0.2/m,
    )

    const showJson = await runCli(cli.env, ['show', 'dev', '-o', 'json'])
    expect(JSON.parse(showJson.stdout)).toMatchObject({ name: 'dev', status: 'running' })

    const missing = await runCli(cli.env, ['show', 'nosuch'])
    expect(missing.exitCode).toBe(1)
    expectOneLineError(missing.stderr, 'MESH_WORKSPACE_NOT_FOUND')
  })

  it('should stop, start, restart and delete a workspace', async () => {
    fake.nextBuild = { lines: ['ok'], status: 'succeeded' }
    const stop = await runCli(cli.env, ['stop', 'dev', '-y'])
    expect([stop.exitCode, stop.stdout]).toEqual([0, 'ok\nWorkspace dev is stopped\n'])
    const start = await runCli(cli.env, ['start', 'dev'])
    expect([start.exitCode, start.stdout]).toEqual([0, 'ok\nWorkspace dev is running\n'])
    const restart = await runCli(cli.env, ['restart', 'dev'])
    expect([restart.exitCode, restart.stdout]).toEqual([0, 'ok\nok\nWorkspace dev is running\n'])

    const refused = await runCli(cli.env, ['delete', 'dev'])
    expect(refused.exitCode).toBe(1)
    expect(fake.workspaces.has('dev')).toBe(true)

    const del = await runCli(cli.env, ['delete', 'dev', '-y'])
    expect([del.exitCode, del.stdout, del.stderr]).toEqual([0, 'ok\nWorkspace dev deleted\n', ''])
    expect(fake.workspaces.has('dev')).toBe(false)
  })

  it('should take the URL and token from the environment over the session file', async () => {
    const env = { ...cli.env, CODER_MESH_SESSION_TOKEN: 'cms_wrong' }
    const r = await runCli(env, ['list'])
    expect(r.exitCode).toBe(1)
    expectOneLineError(r.stderr, 'MESH_UNAUTHENTICATED')

    const other = await cliEnv({ CODER_MESH_URL: fake.url, CODER_MESH_SESSION_TOKEN: fake.token })
    const ok = await runCli(other.env, ['list', '-o', 'json'])
    expect(ok.exitCode, ok.stderr).toBe(0)
    await rm(other.home, { recursive: true, force: true })
  })

  it('should forget the session on logout', async () => {
    const r = await runCli(cli.env, ['logout'])
    expect(r.exitCode).toBe(0)
    const after = await runCli(cli.env, ['list'])
    expectOneLineError(after.stderr, 'MESH_NOT_LOGGED_IN')
  })
})

describe('coder-mesh on a terminal', () => {
  let fake: FakeCoordinator
  let cli: CliEnv

  beforeAll(async () => {
    fake = await startFakeCoordinator()
    cli = await cliEnv()
  })

  afterAll(async () => {
    await fake?.close()
    await rm(cli.home, { recursive: true, force: true })
  })

  function spawnCli(args: string[]) {
    const term = pty.spawn(BIN, args, { cols: 100, rows: 30, env: cli.env })
    let screen = ''
    term.onData((d) => {
      screen += d
    })
    const exited = new Promise<number>((resolve) => term.onExit((e) => resolve(e.exitCode)))
    const waitFor = async (text: string): Promise<void> => {
      const deadline = Date.now() + 15_000
      while (!screen.includes(text)) {
        if (Date.now() > deadline)
          throw new Error(`no ${JSON.stringify(text)} in ${JSON.stringify(screen)}`)
        await new Promise((r) => setTimeout(r, 25))
      }
    }
    return { term, exited, waitFor, screen: () => screen }
  }

  it('should ask for the first user and hide the password', async () => {
    const run = spawnCli(['login', fake.url])
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
    expect(fake.users.get('alice')?.password).toBe('sup3r-secret-pw')
  })

  it('should ask before deleting and stop on no', async () => {
    fake.addWorkspace('dev')
    const run = spawnCli(['delete', 'dev'])
    await run.waitFor('[y/N]')
    run.term.write('n\r')
    expect(await run.exited).toBe(1)
    expect(run.screen()).toMatch(/Canceled/)
    expect(fake.workspaces.has('dev')).toBe(true)
  })
})
