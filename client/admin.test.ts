/**
 * `coder-mesh users`, `tokens` and `audit` as users run them (bin/coder-mesh
 * in a child process) against a real coordinator served in this process.
 */
import { execa } from 'execa'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startServer, type RunningServer } from '../coordinator/server.ts'
import { PASSWORD } from '../coordinator/testing.ts'
import { ApiClient } from '../sdk/api-client.ts'
import { createLogger } from '../sdk/logger.ts'
import { parseSince } from './commands/audit.ts'
import { parseDuration } from './commands/tokens.ts'

const BIN = fileURLToPath(new URL('../bin/coder-mesh', import.meta.url))

describe('parseDuration and parseSince', () => {
  it.each([
    ['90s', 90],
    ['30m', 1800],
    ['12h', 43_200],
    ['30d', 2_592_000],
    ['1d12h', 129_600],
    ['2w', 1_209_600],
  ])('should read %s as %i seconds', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds)
  })

  it.each(['', '30', 'd', '30x', '1d 2h', '-1d'])('should refuse %j', (text) => {
    expect(() => parseDuration(text)).toThrow(/Invalid duration/)
  })

  it('should read --since as a duration back from now or as a time', () => {
    const now = Date.parse('2025-01-02T00:00:00Z')
    expect(parseSince('1d', now)).toBe('2025-01-01T00:00:00.000Z')
    expect(parseSince('2024-05-01T10:00:00Z', now)).toBe('2024-05-01T10:00:00.000Z')
    expect(() => parseSince('yesterday', now)).toThrow(/Invalid --since/)
  })
})

describe('coder-mesh users, tokens and audit', () => {
  let server: RunningServer
  let base: string
  let ownerToken: string

  const cli = async (args: string[], token = ownerToken) => {
    const r = await execa(BIN, args, {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: base,
        CODER_MESH_CONFIG_DIR: join(base, 'config'),
        CODER_MESH_URL: server.url,
        CODER_MESH_SESSION_TOKEN: token,
        CODER_MESH_LOG_LEVEL: 'warn',
      },
      extendEnv: false,
      reject: false,
      input: '',
      timeout: 60_000,
      stripFinalNewline: false,
    })
    return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) }
  }

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'coder-mesh-admin-'))
    server = await startServer({
      address: '127.0.0.1:0',
      dataDir: join(base, 'data'),
      p2pListen: ['/ip4/127.0.0.1/tcp/0'],
      log: createLogger('mesh:test', 'silent'),
    })
    const api = new ApiClient({ url: server.url })
    await api.createFirstUser({ username: 'alice', email: 'a@example.com', password: PASSWORD })
    ownerToken = (await api.login('alice', PASSWORD)).sessionToken
  })

  afterAll(async () => {
    await server?.close()
    await rm(base, { recursive: true, force: true })
  })

  it('should create, list, suspend, activate and delete users', async () => {
    const created = await cli([
      'users',
      'create',
      'bob',
      '--email',
      'bob@example.com',
      '--password',
      PASSWORD,
      '--role',
      'template-admin',
    ])
    expect(created.stderr).toBe('')
    expect(created.stdout).toBe('Created user bob <bob@example.com>: template-admin, active\n')

    const list = await cli(['users', 'list'])
    expect(list.stdout).toMatch(/^USERNAME +EMAIL +ROLES +STATUS +CREATED\n/)
    expect(list.stdout).toMatch(/\nbob +bob@example\.com +template-admin +active +just now\n/)

    expect((await cli(['users', 'suspend', 'bob'])).stdout).toBe('User bob suspended\n')
    const json = JSON.parse((await cli(['users', 'list', '-o', 'json'])).stdout)
    expect(json.find((u: { username: string }) => u.username === 'bob').status).toBe('suspended')
    expect((await cli(['users', 'activate', 'bob'])).stdout).toBe('User bob activated\n')
    expect((await cli(['users', 'roles', 'bob', 'member'])).stdout).toMatch(/: member, active/)

    const noYes = await cli(['users', 'delete', 'bob'])
    expect(noYes.exitCode).toBe(1)
    expect(noYes.stderr).toMatch(/pass -y/)
    expect((await cli(['users', 'delete', 'bob', '-y'])).stdout).toBe('User bob deleted\n')
    const gone = await cli(['users', 'show', 'bob'])
    expect(gone.stderr).toMatch(/^error: User "bob" does not exist\. \(MESH_USER_NOT_FOUND\)\n$/)
  })

  it('should refuse user commands to a member in one line', async () => {
    await cli(['users', 'create', 'carol', '--email', 'c@example.com', '--password', PASSWORD])
    const carol = (await new ApiClient({ url: server.url }).login('carol', PASSWORD)).sessionToken
    const r = await cli(['users', 'list'], carol)
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toBe('error: You do not have permission to do this. (MESH_FORBIDDEN)\n')

    const password = await cli(
      ['users', 'password', '--old-password', PASSWORD, '--password', 'carol new password'],
      carol,
    )
    expect(password.stdout).toBe('Password changed\n')
  })

  it("should say whose list is empty, and hint at create only on one's own", async () => {
    const theirs = await cli(['list', '--owner', 'carol'])
    expect(theirs.exitCode).toBe(0)
    expect(theirs.stdout + theirs.stderr).toMatch(/^carol has no workspaces\.\n$/)
    const carol = (await new ApiClient({ url: server.url }).login('carol', 'carol new password'))
      .sessionToken
    const own = await cli(['list'], carol)
    expect(own.stdout + own.stderr).toMatch(/create one with 'coder-mesh create NAME/)
  })

  it('should print a new token alone on stdout, list it, and stop it working once deleted', async () => {
    const created = await cli(['tokens', 'create', 'ci', '--lifetime', '2d'])
    expect(created.exitCode).toBe(0)
    expect(created.stderr).toMatch(/shown only now/)
    const token = created.stdout.trim()
    expect(token).toMatch(/^cmt_[A-Za-z0-9_-]{43}$/)

    const list = await cli(['tokens', 'list'], token)
    expect(list.stdout).toMatch(
      /^NAME +CREATED +EXPIRES +LAST USED\nci +just now +in (2d|47h|48h) +just now\n$/,
    )

    expect((await cli(['tokens', 'delete', 'ci'])).stdout).toBe('Token ci deleted\n')
    const refused = await cli(['tokens', 'list'], token)
    expect(refused.exitCode).toBe(1)
    expect(refused.stderr).toMatch(/\(MESH_UNAUTHENTICATED\)\n$/)

    const bad = await cli(['tokens', 'create', 'x', '--lifetime', 'forever'])
    expect(bad.stderr).toMatch(/Invalid duration/)
  })

  it('should show the audit log, filtered, as a table and as JSON', async () => {
    const table = await cli(['audit', '--action', 'user.', '--since', '1h'])
    expect(table.stdout).toMatch(/^TIME +USER +ACTION +TARGET +RESULT +ADDRESS\n/)
    expect(table.stdout).toMatch(/alice +user\.delete +user:bob +ok +127\.0\.0\.1/)
    expect(table.stdout).not.toMatch(/token\.create/)

    const json = JSON.parse(
      (await cli(['audit', '--user', 'alice', '--limit', '3', '-o', 'json'])).stdout,
    )
    expect(json).toHaveLength(3)
    for (const entry of json) expect(entry.actor).toBe('alice')
  })
})
