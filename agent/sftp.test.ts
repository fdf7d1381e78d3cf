/**
 * The agent's SFTP server at the protocol level: the real SSH service
 * (createSshService) on a loopback socket, driven by ssh2's SFTP client,
 * which sends the requests OpenSSH's client does not (plain RENAME, reads
 * past the end, bad handles).
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type ssh2 from 'ssh2'
import type { SFTPWrapper } from 'ssh2'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { modeString } from './sftp-listing.ts'
import { openFlags, STATUS, statusFor } from './sftp-protocol.ts'
import { startLocalSsh, type LocalSsh } from './ssh-testing.ts'

function call<T = unknown>(fn: (cb: (err?: Error | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) =>
    fn((err, value) => (err ? reject(err) : resolve(value as T))),
  )
}

function code(err: unknown): number | undefined {
  return (err as { code?: number }).code
}

describe('agent SFTP server', () => {
  let local: LocalSsh
  let dir: string
  let sftp: SFTPWrapper

  beforeAll(async () => {
    local = await startLocalSsh()
    dir = local.dir
    sftp = await call<SFTPWrapper>((cb) => local.client.sftp((err, s) => cb(err, s)))
  })

  afterAll(async () => {
    await local?.close()
  })

  it('should answer a read past the end with EOF and a short read with what is there', async () => {
    const file = join(dir, 'seven')
    await writeFile(file, '1234567')
    const handle = await call<Buffer>((cb) => sftp.open(file, 'r', cb))
    const buf = Buffer.alloc(100)
    const n = await call<number>((cb) => sftp.read(handle, buf, 0, 100, 3, (e, b) => cb(e, b)))
    expect(buf.subarray(0, n).toString()).toBe('4567')
    // ssh2's client turns the EOF status into a read of 0 bytes.
    const past = await call<number>((cb) => sftp.read(handle, buf, 0, 10, 7, (e, b) => cb(e, b)))
    expect(past).toBe(0)
    await call((cb) => sftp.close(handle, cb))
  })

  it('should refuse a plain RENAME over an existing file, and name missing files', async () => {
    await writeFile(join(dir, 'a'), 'a')
    await writeFile(join(dir, 'b'), 'b')
    const clash = call((cb) => sftp.rename(join(dir, 'a'), join(dir, 'b'), cb))
    await expect(clash).rejects.toSatisfy((err) => code(err) === STATUS.FAILURE)
    expect(await readFile(join(dir, 'b'), 'utf8')).toBe('b')

    const missing = call((cb) => sftp.stat(join(dir, 'nope'), cb))
    await expect(missing).rejects.toSatisfy((err) => code(err) === STATUS.NO_SUCH_FILE)
    const badHandle = call((cb) => sftp.close(Buffer.from('zzzz'), cb))
    await expect(badHandle).rejects.toSatisfy((err) => code(err) === STATUS.FAILURE)
  })

  it('should write at offsets, set attributes and list a folder with long names', async () => {
    const file = join(dir, 'w')
    const handle = await call<Buffer>((cb) => sftp.open(file, 'w', { mode: 0o640 }, cb))
    await call((cb) => sftp.write(handle, Buffer.from('world'), 0, 5, 6, cb))
    await call((cb) => sftp.write(handle, Buffer.from('hello '), 0, 6, 0, cb))
    await call((cb) => sftp.fsetstat(handle, { mtime: 1_000_000_000, atime: 1_000_000_000 }, cb))
    await call((cb) => sftp.close(handle, cb))
    expect(await readFile(file, 'utf8')).toBe('hello world')
    const st = await call<ssh2.Stats>((cb) => sftp.stat(file, cb))
    expect(st.mode & 0o777).toBe(0o640)
    expect(st.mtime).toBe(1_000_000_000)

    const list = await call<ssh2.FileEntry[]>((cb) => sftp.readdir(dir, cb))
    const entry = list.find((e) => e.filename === 'w')
    expect(entry?.longname).toMatch(/^-rw-r----- +1 \S+ +\S+ +11 Sep {2}9 {2}2001 w$/)
  })
})

describe('SFTP helpers', () => {
  it.each([
    [{ code: 'ENOENT' }, STATUS.NO_SUCH_FILE],
    [{ code: 'EACCES' }, STATUS.PERMISSION_DENIED],
    [{ code: 'EISDIR' }, STATUS.FAILURE],
  ])('should map %o to status %i', (err, want) => {
    expect(statusFor(err).code).toBe(want)
  })

  it('should map open flags and mode strings', () => {
    expect(openFlags(0x01)).toBe(0)
    expect(openFlags(0x02 | 0x08 | 0x10)).toBe(0o1 | 0o100 | 0o1000)
    expect(modeString(0o100644)).toBe('-rw-r--r--')
    expect(modeString(0o41777)).toBe('drwxrwxrwt')
    expect(modeString(0o104755)).toBe('-rwsr-xr-x')
  })
})
