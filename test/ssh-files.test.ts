/**
 * Moving files with OpenSSH's tools through the mesh: scp (which speaks
 * SFTP in current OpenSSH), sftp against the agent's in-process SFTP
 * server, and rsync over exec. One real server and workspace for the file.
 * The workspace runs on this machine, so the test checks the far side's
 * files directly as well as through ssh.
 */
import { execa } from 'execa'
import { createHash } from 'node:crypto'
import { createReadStream, lstatSync, readlinkSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { removeTree, startWorkspaceFixture, type WorkspaceFixture } from './harness.ts'

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

describe('file transfer with OpenSSH tools', () => {
  let ws: WorkspaceFixture
  let local: string
  /** A folder on the workspace side (the same machine), named by absolute path. */
  let remote: string

  const sftpBatch = (batch: string, extra: string[] = []) =>
    ws.tool('sftp', ['-F', ws.sshConfig, ...extra, '-b', '-', ws.host], { input: batch })

  beforeAll(async () => {
    ws = await startWorkspaceFixture('files')
    local = await mkdtemp(join(tmpdir(), 'coder-mesh-files-local-'))
    remote = await mkdtemp(join(tmpdir(), 'coder-mesh-files-remote-'))
  })

  afterAll(async () => {
    await ws?.close()
    if (local !== undefined) await removeTree(local)
    if (remote !== undefined) await removeTree(remote)
  })

  it('should scp 200 MB to the workspace and back with identical checksums', async () => {
    const big = join(local, 'big.bin')
    await execa('sh', ['-c', `head -c 209715200 /dev/urandom > '${big}'`])
    const want = await sha256(big)

    // Up into the home folder (a relative path), back from ~/ (expand-path).
    let started = Date.now()
    const up = await ws.tool('scp', ['-F', ws.sshConfig, big, `${ws.host}:big.bin`])
    const upSeconds = (Date.now() - started) / 1000
    expect(up.exitCode, up.stderr).toBe(0)
    const far = await ws.tool('ssh', ['-F', ws.sshConfig, ws.host, 'sha256sum big.bin'])
    expect(far.stdout.split(' ')[0]).toBe(want)

    started = Date.now()
    const back = join(local, 'back.bin')
    const down = await ws.tool('scp', ['-F', ws.sshConfig, `${ws.host}:~/big.bin`, back])
    const downSeconds = (Date.now() - started) / 1000
    expect(down.exitCode, down.stderr).toBe(0)
    expect(await sha256(back)).toBe(want)
    console.log(
      `scp 200 MiB: up ${(200 / upSeconds).toFixed(1)} MiB/s, ` +
        `down ${(200 / downSeconds).toFixed(1)} MiB/s`,
    )
    await ws.tool('ssh', ['-F', ws.sshConfig, ws.host, 'rm big.bin'])
  }, 240_000)

  it('should run an sftp session: ls, mkdir, put, get, rename, chmod, symlink, rm', async () => {
    const small = join(local, 'small.txt')
    await writeFile(small, 'small file\n'.repeat(1000))
    const got = join(local, 'got.txt')
    const batch = [
      `cd ${remote}`,
      'mkdir d1',
      `put ${small} d1/small.txt`,
      'ls -l d1',
      'rename d1/small.txt d1/renamed.txt',
      'chmod 600 d1/renamed.txt',
      'symlink renamed.txt d1/link.txt',
      `get d1/link.txt ${got}`,
      'ls -la d1',
      'pwd',
    ].join('\n')
    const r = await sftpBatch(batch)
    expect(r.exitCode, r.stderr).toBe(0)
    // sftp prints the server's ls -l style long names.
    expect(r.stdout).toMatch(/\n-rw-r--r-- +1 \S+ +\S+ +11000 \w{3} [ \d]\d \d\d:\d\d small\.txt\n/)
    expect(r.stdout).toMatch(/\ndrwx.* \.\.\n/)
    expect(r.stdout).toMatch(/\n-rw------- .* renamed\.txt\n/)
    expect(r.stdout).toMatch(/\nlrwxrwxrwx .* 11 .* link\.txt\n/)
    expect(r.stdout).toContain(`Remote working directory: ${remote}`)
    expect(await readFile(got, 'utf8')).toBe(await readFile(small, 'utf8'))
    expect(lstatSync(join(remote, 'd1', 'renamed.txt')).mode & 0o777).toBe(0o600)
    expect(readlinkSync(join(remote, 'd1', 'link.txt'))).toBe('renamed.txt')

    // sftp's rename uses posix-rename@openssh.com, which replaces, as with sshd.
    await writeFile(join(remote, 'd1', 'other.txt'), 'x')
    const replace = await sftpBatch(`cd ${remote}\nrename d1/other.txt d1/renamed.txt\n`)
    expect(replace.exitCode, replace.stderr).toBe(0)
    expect(await readFile(join(remote, 'd1', 'renamed.txt'), 'utf8')).toBe('x')
    const clean = await sftpBatch(`cd ${remote}\nrm d1/renamed.txt\nrm d1/link.txt\nrmdir d1\n`)
    expect(clean.exitCode, clean.stderr).toBe(0)
    await expect(readFile(join(remote, 'd1', 'renamed.txt'))).rejects.toThrow()

    // Errors come back as SFTP statuses with a message.
    const missing = await sftpBatch(`mkdir ${remote}/no-such-dir/sub\n`)
    expect(missing.exitCode).not.toBe(0)
    expect(missing.stderr).toMatch(/No such file/)

    // The home folder is where relative paths start.
    const home = await ws.tool('ssh', ['-F', ws.sshConfig, ws.host, 'pwd'])
    const pwd = await sftpBatch('pwd\n')
    expect(pwd.stdout).toContain(`Remote working directory: ${home.stdout.trim()}`)
  })

  it('should get files at and around read-size edges, and list 5000 entries (B08)', async () => {
    const sizes = [0, 1, 32767, 32768, 32769, 262145, 5 * 1024 * 1024 + 3]
    const want = new Map<number, string>()
    for (const n of sizes) {
      const file = join(remote, `f_${n}`)
      await execa('sh', ['-c', `head -c ${n} /dev/urandom > '${file}'`])
      want.set(n, await sha256(file))
    }
    const into = join(local, 'edges')
    await mkdir(into)
    const batch = sizes.map((n) => `get ${remote}/f_${n} ${into}/`).join('\n')
    const r = await sftpBatch(batch, ['-R', '128', '-B', '65536'])
    expect(r.exitCode, r.stderr).toBe(0)
    for (const n of sizes) expect(await sha256(join(into, `f_${n}`))).toBe(want.get(n))

    const many = join(remote, 'many')
    await mkdir(many)
    await Promise.all(
      Array.from({ length: 5000 }, (_, i) => writeFile(join(many, `entry-${i}`), '')),
    )
    const list = await sftpBatch(`ls -1 ${many}\n`)
    expect(list.exitCode, list.stderr).toBe(0)
    const names = list.stdout.split('\n').filter((l) => l.includes('entry-'))
    expect(names).toHaveLength(5000)
    await removeTree(many)
  })

  it('should rsync a unicode and spaced tree, then transfer nothing the second time', async () => {
    const src = join(local, 'tree')
    const files: Record<string, string> = {
      'plain.txt': 'plain\n',
      'dir with space/ñandú 文件.txt': 'unicode\n',
      'émoji 🎉/a b c.bin': 'x'.repeat(100_000),
      'deep/er/still/deeper.txt': 'deep\n',
    }
    for (const [name, body] of Object.entries(files)) {
      await mkdir(join(src, name, '..'), { recursive: true })
      await writeFile(join(src, name), body)
    }
    await mkdir(join(src, 'empty dir'))
    await symlink('plain.txt', join(src, 'link to plain'))
    const dst = join(remote, 'tree copy')

    const rsync = () =>
      ws.tool('rsync', [
        '-a',
        '--itemize-changes',
        '--stats',
        '-e',
        `ssh -F ${ws.sshConfig}`,
        `${src}/`,
        // rsync passes the remote path to a shell: --protect-args (-s) keeps it whole.
        '-s',
        `${ws.host}:${dst}/`,
      ])
    const first = await rsync()
    expect(first.exitCode, first.stderr).toBe(0)
    expect(first.stdout).toMatch(/Number of regular files transferred: 4/)
    for (const [name, body] of Object.entries(files)) {
      expect(await readFile(join(dst, name), 'utf8')).toBe(body)
    }
    expect(readlinkSync(join(dst, 'link to plain'))).toBe('plain.txt')
    expect(lstatSync(join(dst, 'empty dir')).isDirectory()).toBe(true)

    const second = await rsync()
    expect(second.exitCode, second.stderr).toBe(0)
    expect(second.stdout).toMatch(/Number of regular files transferred: 0/)
    // --itemize-changes names every item it changed; nothing changed.
    const changes = second.stdout.split('\n').filter((l) => /^[<>ch.*][fdLDS]/.test(l))
    expect(changes.filter((l) => !l.startsWith('.'))).toEqual([])
  })

  it('should refuse put and get on FIFOs at once, and keep serving', async () => {
    // More FIFOs than libuv has threadpool threads: each open used to hold
    // one, and four stalled every fs call of the agent.
    const fifos = ['f1', 'f2', 'f3', 'f4', 'f5'].map((n) => join(remote, n))
    await execa('mkfifo', fifos)
    const small = join(local, 'for-fifos.txt')
    await writeFile(small, 'small\n')
    const sftpQuick = (batch: string) =>
      ws.tool('sftp', ['-F', ws.sshConfig, '-b', '-', ws.host], { input: batch, timeout: 60_000 })
    const puts = await Promise.all(fifos.map((f) => sftpQuick(`put ${small} ${f}\n`)))
    for (const r of puts) {
      // OpenSSH's sftp shows the status code's text, not the server's message.
      expect(r.exitCode, r.stderr).toBe(1)
      expect(r.stderr).toMatch(/dest open .*f\d.*: Failure/)
    }
    // sftp itself refuses to get a FIFO, from the STAT the agent answers.
    const get = await sftpQuick(`get ${fifos[0]} ${join(local, 'from-fifo')}\n`)
    expect(get.exitCode, get.stderr).toBe(1)
    expect(get.stderr).toMatch(/not a regular file/)

    const after = await sftpQuick(`put ${small} ${remote}/after-fifos.txt\n`)
    expect(after.exitCode, after.stderr).toBe(0)
    expect(await readFile(join(remote, 'after-fifos.txt'), 'utf8')).toBe('small\n')
  })
})
