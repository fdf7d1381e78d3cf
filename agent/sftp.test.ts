/**
 * The agent's SFTP server at the protocol level: the real SSH service
 * (createSshService) on a loopback socket, driven by ssh2's SFTP client,
 * which sends the requests OpenSSH's client does not (plain RENAME, reads
 * past the end, bad handles).
 */
import { execa } from 'execa'
import { readdirSync, readlinkSync } from 'node:fs'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import type ssh2 from 'ssh2'
import type { SFTPWrapper } from 'ssh2'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { modeString } from './sftp-listing.ts'
import { offsetInRange, openFlags, STATUS, statusFor } from './sftp-protocol.ts'
import { startLocalSsh, type LocalSsh } from './ssh-testing.ts'

function call<T = unknown>(fn: (cb: (err?: Error | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) =>
    fn((err, value) => (err ? reject(err) : resolve(value as T))),
  )
}

/** File descriptors of this process (where the agent's SSH service runs) open on `file`. */
function openFds(file: string): number {
  let n = 0
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === file) n++
    } catch {
      // Closed between the listing and the look.
    }
  }
  return n
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

  it('should refuse FIFOs and sockets at once, and open /dev/null', async () => {
    // More FIFOs than libuv has threadpool threads: a blocking open of each
    // would stall every fs call of the process, this test's included.
    const fifos = ['f1', 'f2', 'f3', 'f4', 'f5'].map((n) => join(dir, n))
    await execa('mkfifo', fifos)
    const opens = fifos.flatMap((f) => [
      call((cb) => sftp.open(f, 'w', cb)),
      call((cb) => sftp.open(f, 'r', cb)),
    ])
    for (const result of await Promise.allSettled(opens)) {
      expect(result.status).toBe('rejected')
      const err = (result as PromiseRejectedResult).reason as Error
      expect([code(err), err.message]).toEqual([STATUS.FAILURE, 'Not a regular file'])
    }
    const socket = join(dir, 'sock')
    const server = createServer()
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    const sock = call((cb) => sftp.open(socket, 'r+', cb))
    await expect(sock).rejects.toThrow('Not a regular file')
    server.close()

    const devNull = await call<Buffer>((cb) => sftp.open('/dev/null', 'w', cb))
    await call((cb) => sftp.write(devNull, Buffer.from('gone'), 0, 4, 0, cb))
    await call((cb) => sftp.close(devNull, cb))
    expect((await stat(fifos[0]!)).isFIFO()).toBe(true)
  })

  it('should refuse READ and WRITE offsets past 2^53 - 1 and leave the file as it was', async () => {
    const file = join(dir, 'edge')
    await writeFile(file, 'hello')
    const handle = await call<Buffer>((cb) => sftp.open(file, 'r+', cb))
    const buf = Buffer.alloc(8)
    // Node would write these at the file's current position (0).
    for (const at of [2 ** 62, 2 ** 53 + 2, Number.MAX_SAFE_INTEGER - 1]) {
      const write = call((cb) => sftp.write(handle, Buffer.from('XX'), 0, 2, at, cb))
      await expect(write).rejects.toSatisfy((err) => code(err) === STATUS.FAILURE)
      const read = call((cb) => sftp.read(handle, buf, 0, 8, at, cb))
      await expect(read).rejects.toThrow('Offset out of range')
    }
    await call((cb) => sftp.close(handle, cb))
    expect(await readFile(file, 'utf8')).toBe('hello')
  })

  it('should close the files a session leaves open when it ends', async () => {
    const file = join(dir, 'left-open')
    await writeFile(file, 'x')
    const session = await call<SFTPWrapper>((cb) => local.client.sftp((err, s) => cb(err, s)))
    await call((cb) => session.open(file, 'r', cb))
    // More OPENs still running when the channel closes.
    for (let i = 0; i < 20; i++) session.open(file, 'r', () => undefined)
    expect(openFds(file)).toBeGreaterThan(0)
    session.end()
    await vi.waitFor(() => expect(openFds(file)).toBe(0), { timeout: 5000 })
    // Later OPENs that were still queued close too.
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(openFds(file)).toBe(0)
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

  it('should take offsets whose last byte is a safe integer, and no others', () => {
    expect(offsetInRange(0, 32768)).toBe(true)
    expect(offsetInRange(Number.MAX_SAFE_INTEGER - 5, 5)).toBe(true)
    expect(offsetInRange(Number.MAX_SAFE_INTEGER - 5, 6)).toBe(false)
    expect(offsetInRange(2 ** 53 + 2, 0)).toBe(false)
    expect(offsetInRange(2n ** 62n, 1)).toBe(false)
    expect(offsetInRange(-1, 1)).toBe(false)
  })

  it('should map open flags and mode strings', () => {
    expect(openFlags(0x01)).toBe(0)
    expect(openFlags(0x02 | 0x08 | 0x10)).toBe(0o1 | 0o100 | 0o1000)
    expect(modeString(0o100644)).toBe('-rw-r--r--')
    expect(modeString(0o41777)).toBe('drwxrwxrwt')
    expect(modeString(0o104755)).toBe('-rwsr-xr-x')
  })
})
