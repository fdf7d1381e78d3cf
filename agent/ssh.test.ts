import { execFileSync } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import ssh2, { type ClientChannel } from 'ssh2'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadOrCreateHostKey, newHostKey } from './ssh.ts'
import { startLocalSsh, type LocalSsh } from './ssh-testing.ts'

function hasSshKeygen(): boolean {
  try {
    execFileSync('ssh-keygen', ['-?'], { stdio: 'ignore' })
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT'
  }
}

describe('SSH host key', () => {
  it('should generate keys that ssh2 always parses, with the matching public key', () => {
    for (let i = 0; i < 200; i++) {
      const pair = newHostKey()
      const parsed = ssh2.utils.parseKey(pair.private)
      if (parsed instanceof Error) throw parsed
      const key = Array.isArray(parsed) ? parsed[0]! : parsed
      expect(key.type).toBe('ssh-ed25519')
      const blob = key.getPublicSSH()
      expect(`ssh-ed25519 ${Buffer.from(blob).toString('base64')}`).toBe(pair.public)
      // It signs, and the signature verifies.
      const data = Buffer.from(`message ${i}`)
      expect(key.verify(data, key.sign(data) as Buffer)).toBe(true)
    }
  })

  it.skipIf(!hasSshKeygen())('should write a key OpenSSH reads', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-hostkey-'))
    try {
      await loadOrCreateHostKey(dir)
      const file = join(dir, 'ssh_host_ed25519_key')
      const pub = execFileSync('ssh-keygen', ['-y', '-f', file], { encoding: 'utf8' })
      const written = await import('node:fs/promises').then((fs) =>
        fs.readFile(`${file}.pub`, 'utf8'),
      )
      expect(pub.trim().split(' ').slice(0, 2).join(' ')).toBe(written.trim())
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('should keep the key across loads and refuse a corrupt one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-hostkey-'))
    try {
      const first = await loadOrCreateHostKey(dir)
      expect(await loadOrCreateHostKey(dir)).toBe(first)
      await writeFile(join(dir, 'ssh_host_ed25519_key'), 'garbage')
      await expect(loadOrCreateHostKey(dir)).rejects.toThrow(/unreadable/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('SSH session requests', () => {
  let local: LocalSsh

  beforeAll(async () => {
    local = await startLocalSsh()
  })

  afterAll(async () => {
    await local?.close()
  })

  it('should deliver a signal request to the session process', async () => {
    const channel = await new Promise<ClientChannel>((resolve, reject) =>
      local.client.exec(
        "trap 'kill $!; echo got-usr1; exit 9' USR1; echo ready; sleep 30 & wait",
        (err, ch) => (err ? reject(err) : resolve(ch)),
      ),
    )
    let out = ''
    channel.on('data', (d: Buffer) => {
      out += d.toString()
      if (d.toString().includes('ready')) channel.signal('USR1')
    })
    const code = await new Promise<number>((resolve) => channel.on('exit', resolve))
    expect(out).toContain('got-usr1')
    expect(code).toBe(9)
  })

  it('should accept the env allow list and drop the rest', async () => {
    const channel = await new Promise<ClientChannel>((resolve, reject) =>
      local.client.exec(
        'echo "$COLORTERM|$TZ|${BASH_ENV:-unset}"',
        { env: { COLORTERM: 'truecolor', TZ: 'UTC', BASH_ENV: '/tmp/x' } },
        (err, ch) => (err ? reject(err) : resolve(ch)),
      ),
    )
    let out = ''
    channel.on('data', (d: Buffer) => (out += d.toString()))
    await new Promise((resolve) => channel.on('close', resolve))
    expect(out).toBe('truecolor|UTC|unset\n')
  })
})
