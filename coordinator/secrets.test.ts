/**
 * Secrets at rest: after users log in and make API tokens and a build
 * issues an agent token, no password or token is in the data folder in any
 * usable form: not raw, not base64 or hex, not the token's random bytes,
 * neither in the files as written (LevelDB may compress blocks) nor in the
 * records read back through LevelDB. The build runs the real terraform, on a
 * template that hands the agent token to a local-exec (the probe).
 */
import { Level } from 'level'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { openProbe, PASSWORD, testCoordinator, waitForBuild } from './testing.ts'

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...(await filesUnder(path)))
    else if (entry.isFile()) out.push(path)
  }
  return out
}

/** Every form a secret could be stored in and still be used. */
function forms(secret: string): Buffer[] {
  const raw = Buffer.from(secret)
  const out = [raw, Buffer.from(raw.toString('base64')), Buffer.from(raw.toString('hex'))]
  out.push(Buffer.from(raw.toString('base64url')), Buffer.from(secret, 'utf16le'))
  const random = /^cm[sta]_(.+)$/.exec(secret)?.[1]
  if (random !== undefined) {
    const bytes = Buffer.from(random, 'base64url')
    out.push(Buffer.from(random), bytes, Buffer.from(bytes.toString('hex')))
    out.push(Buffer.from(bytes.toString('base64')))
  }
  return out
}

describe('secrets at rest', () => {
  it('should keep no password or token in the data folder in a usable form', async () => {
    const probe = await openProbe()
    const t = await testCoordinator()
    const secrets: string[] = [PASSWORD, 'another password 42']

    const owner = await t.owner()
    secrets.push(owner)
    const bob = await t.user(owner, 'bob')
    secrets.push(bob)
    await t.call('PUT', '/api/v1/users/me/password', {
      token: bob,
      body: { oldPassword: PASSWORD, password: 'another password 42' },
    })
    for (const [token, name] of [
      [owner, 'ci'],
      [bob, 'laptop'],
    ] as const) {
      const res = await t.call('POST', '/api/v1/tokens', { token, body: { name } })
      secrets.push(res.json.token)
      await t.call('GET', '/api/v1/users/me', { token: res.json.token })
    }
    await t.call('POST', '/api/v1/templates/local/versions', { token: owner, body: probe.template })
    const ws = await t.call('POST', '/api/v1/workspaces', {
      token: bob,
      body: { name: 'dev', template: 'local' },
    })
    expect((await waitForBuild(t, bob, ws.json.build.id)).status).toBe('succeeded')
    secrets.push(await probe.agentToken('dev'))
    // A wrong password typed at login must not be kept either.
    await t.call('POST', '/api/v1/users/login', {
      body: { username: 'bob', password: 'typo password 7' },
    })
    secrets.push('typo password 7')
    expect(secrets.filter((s) => s.startsWith('cm')).length).toBe(5)
    await t.close()

    const files = await filesUnder(t.dataDir)
    expect(files.length).toBeGreaterThan(3)
    for (const file of files) {
      const bytes = await readFile(file)
      for (const secret of secrets) {
        for (const form of forms(secret)) {
          expect(bytes.includes(form), `${file} holds ${secret}`).toBe(false)
        }
      }
    }

    // Read back through LevelDB too: blocks on disk may be compressed.
    const db = new Level<string, string>(join(t.dataDir, 'store'), { valueEncoding: 'utf8' })
    let records = 0
    try {
      for await (const [key, value] of db.iterator()) {
        records++
        const text = Buffer.from(key + value)
        for (const secret of secrets) {
          for (const form of forms(secret)) expect(text.includes(form), key).toBe(false)
        }
      }
    } finally {
      await db.close()
    }
    expect(records).toBeGreaterThan(10)
    await t.cleanup()
    await probe.cleanup()
  })
})
