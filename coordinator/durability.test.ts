/**
 * Crash durability: a real `coder-mesh server` in a child process takes a
 * burst of writes (API tokens and template versions, eight at a time) and
 * is killed with SIGKILL in the middle of it. After a restart on the same
 * data folder, every write the server acknowledged is there.
 */
import { execa, type ResultPromise } from 'execa'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { ApiClient } from '../sdk/api-client.ts'
import { PASSWORD, templateBody } from './testing.ts'

const BIN = fileURLToPath(new URL('../bin/coder-mesh', import.meta.url))
const WORKERS = 8
/** Acknowledged writes to wait for before the kill. */
const ACKED_BEFORE_KILL = 80

async function spawnServer(dataDir: string, home: string) {
  const child = execa(BIN, ['server', '--address', '127.0.0.1:0', '--data-dir', dataDir], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, CODER_MESH_LOG_LEVEL: 'error' },
    extendEnv: false,
    reject: false,
    buffer: false,
    stdin: 'ignore',
  })
  const url = await new Promise<string>((resolve, reject) => {
    let seen = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
      const match = /listening on (http:\/\/\S+)/.exec(seen)
      if (match?.[1] !== undefined) resolve(match[1])
    })
    void child.then((r) => reject(new Error(`server exited ${r.exitCode}: ${seen}`)))
  })
  return { child, url }
}

describe('durability', () => {
  const children: ResultPromise[] = []
  let base: string | undefined

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL')
    await Promise.allSettled(children)
    if (base !== undefined) await rm(base, { recursive: true, force: true })
  })

  it('should keep every acknowledged write across kill -9 during a burst', async () => {
    base = await mkdtemp(join(tmpdir(), 'mesh-durability-'))
    const dataDir = join(base, 'data')
    const first = await spawnServer(dataDir, base)
    children.push(first.child)

    const api = new ApiClient({ url: first.url })
    await api.createFirstUser({ username: 'alice', email: 'a@example.com', password: PASSWORD })
    api.token = (await api.login('alice', PASSWORD)).sessionToken

    const tokens: string[] = []
    const versions: string[] = []
    let next = 0
    let killed = false
    const acked = (): number => tokens.length + versions.length

    const worker = async (): Promise<void> => {
      while (!killed) {
        const i = next++
        try {
          if (i % 2 === 0) {
            const name = `t-${i}`
            await api.createToken({ name })
            tokens.push(name)
          } else {
            const template = `tpl-${i % 6}`
            const version = await api.pushTemplate(template, templateBody(`# ${i}\n`))
            versions.push(`${template}@${version.version}`)
          }
        } catch {
          if (!killed) throw new Error(`write ${i} failed before the kill`)
          return
        }
        if (acked() >= ACKED_BEFORE_KILL && !killed) {
          killed = true
          first.child.kill('SIGKILL')
        }
      }
    }
    await Promise.all(Array.from({ length: WORKERS }, worker))
    const exit = await first.child
    expect(exit.signal).toBe('SIGKILL')
    expect(acked()).toBeGreaterThanOrEqual(ACKED_BEFORE_KILL)

    const second = await spawnServer(dataDir, base)
    children.push(second.child)
    const again = new ApiClient({ url: second.url })
    again.token = (await again.login('alice', PASSWORD)).sessionToken

    const stored = new Set((await again.tokens()).map((t) => t.name))
    for (const name of tokens) expect(stored, name).toContain(name)
    const storedVersions = new Set<string>()
    for (const template of await again.templates()) {
      for (const v of await again.templateVersions(template.name)) {
        storedVersions.add(`${v.template}@${v.version}`)
      }
    }
    for (const version of versions) expect(storedVersions, version).toContain(version)

    // The audit log kept up too: every acknowledged token creation is in it.
    const audited = new Set(
      (await again.audit({ action: 'token.create', limit: 10_000 })).map((e) => e.target),
    )
    for (const name of tokens) expect(audited).toContain(`token:alice/${name}`)
  })
})
