/**
 * The `sftp` subsystem, in process, on ssh2's SFTP server stream: version 3
 * of the protocol (draft-ietf-secsh-filexfer-02, what OpenSSH speaks) with
 * OpenSSH's extensions posix-rename, hardlink, fsync and expand-path. In
 * process so that scp and sftp work in any image, with or without
 * openssh-sftp-server installed.
 *
 * Semantics follow OpenSSH's sftp-server where clients can tell:
 * - relative paths are taken from the user's home folder;
 * - a READ at or past the end answers EOF, a short read returns what is
 *   there (B08); READDIR hands out at most DIR_BATCH entries, then EOF;
 * - plain RENAME never replaces an existing target (posix-rename does);
 * - errno values map to NO_SUCH_FILE, PERMISSION_DENIED or FAILURE, with
 *   the error's text as the message.
 * Where it differs, because it shares the agent's process (and libuv's four
 * threadpool threads) with everything else:
 * - OPEN never blocks, and refuses FIFOs and sockets ("Not a regular
 *   file"), which sftp-server opens and waits on;
 * - files are open with O_NONBLOCK, so a READ of a terminal or another
 *   character device with nothing to read fails (EAGAIN) instead of waiting;
 * - READ and WRITE refuse offsets past 2^53 - 1 ("Offset out of range").
 * Requests run one at a time in arrival order (see `handle` below).
 * Backpressure toward the client is ssh2's: replies wait in the channel's
 * buffer until the client's window opens, and the client bounds its
 * outstanding requests (64 by default).
 *
 * Known shortcomings: ssh2 decodes every path as UTF-8, so a file whose
 * name is not valid UTF-8 cannot be named (it lists with U+FFFD in its
 * name, and opening that name fails); fixing it takes byte-string paths in
 * ssh2's SFTP parser. And ssh2's server cannot send EXTENDED_REPLY, so
 * statvfs@openssh.com (sftp's `df`) and limits@openssh.com are not offered;
 * clients then use their default request sizes.
 */
import { constants as fsConstants, type BigIntStats, type Dir, type Stats } from 'node:fs'
import * as fs from 'node:fs/promises'
import { dirname, basename, posix } from 'node:path'
import type { FileHandle } from 'node:fs/promises'
import type { Attributes, SFTPWrapper } from 'ssh2'
import type { Logger } from '../sdk/logger.ts'
import { longName, type Attrs } from './sftp-listing.ts'
import {
  advertiseExtensions,
  FXF_WRITE,
  offsetInRange,
  openFlags,
  sshStrings,
  STATUS,
  statusFor,
  type SftpInternals,
} from './sftp-protocol.ts'

/** Largest read answered, as sftp-server (SFTP_MAX_READ_LENGTH): 256 KiB less headroom. */
const MAX_READ = 255 * 1024
/** Entries per READDIR answer, as sftp-server. */
const DIR_BATCH = 100
/** Open handles one session may hold. */
const MAX_HANDLES = 1024

type OpenFile = { kind: 'file'; fh: FileHandle; path: string }
type OpenDir = { kind: 'dir'; dir: Dir; path: string; dotsSent: boolean; done: boolean }
type Handle = OpenFile | OpenDir

/** OPEN's answer for a FIFO or a socket, which reads and writes could wait on forever. */
const NOT_A_FILE = 'Not a regular file'

/** Attributes for an answer that carries none (REALPATH, READLINK). */
const NO_ATTRS = {} as Attributes

function toAttrs(st: Stats | BigIntStats): Attributes & Attrs {
  return {
    mode: Number(st.mode),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    atime: Math.floor(Number(st.atimeMs) / 1000),
    mtime: Math.floor(Number(st.mtimeMs) / 1000),
    nlink: Number(st.nlink),
  }
}

export interface SftpSessionInit {
  /** The folder relative paths start from (the user's home). */
  home: string
  log: Logger
}

/**
 * Serves SFTP on `sftp` until the channel closes; then every open file and
 * folder handle is closed.
 */
export function serveSftp(sftp: SFTPWrapper, init: SftpSessionInit): void {
  const { home, log } = init
  const handles = new Map<string, Handle>()
  let nextHandle = 1
  let closed = false

  advertiseExtensions(sftp)

  const resolvePath = (p: string): string => posix.resolve(home, p === '' ? '.' : p)

  const fail = (id: number, err: unknown): void => {
    const { code, message } = statusFor(err)
    if (code === STATUS.FAILURE) log.debug({ err: (err as Error).message }, 'sftp request failed')
    sftp.status(id, code, message)
  }

  const ok = (id: number): void => {
    sftp.status(id, STATUS.OK, 'Success')
  }

  /**
   * Runs `fn` for request `id` after every earlier request, answering its
   * error as a status. One at a time, in order, as sftp-server: OpenSSH's
   * client truncates an upload or download at the last offset acknowledged
   * in order once it sees answers out of order ("server reordered ACKs").
   */
  let queue: Promise<void> = Promise.resolve()
  const handle = (id: number, fn: () => Promise<void>): void => {
    queue = queue.then(fn).catch((err: unknown) => {
      if (!closed) fail(id, err)
    })
  }

  const addHandle = (h: Handle): Buffer | undefined => {
    if (handles.size >= MAX_HANDLES) return undefined
    const buf = Buffer.alloc(4)
    buf.writeUInt32BE(nextHandle++ >>> 0)
    handles.set(buf.toString('hex'), h)
    return buf
  }

  const lookup = (buf: Buffer): Handle | undefined => handles.get(buf.toString('hex'))

  const badHandle = (id: number): void => {
    sftp.status(id, STATUS.FAILURE, 'Invalid handle')
  }

  const outOfRange = (id: number): void => {
    sftp.status(id, STATUS.FAILURE, 'Offset out of range')
  }

  /** SETSTAT (on `path`, following links, as sftp-server) or FSETSTAT (on `fh`). */
  const applyAttrs = async (path: string, attrs: Attrs, fh?: FileHandle): Promise<void> => {
    // The order sftp-server uses: size, mode, times, owner.
    if (attrs.size !== undefined) {
      if (fh !== undefined) await fh.truncate(attrs.size)
      else await fs.truncate(path, attrs.size)
    }
    if (attrs.mode !== undefined) {
      const mode = attrs.mode & 0o7777
      if (fh !== undefined) await fh.chmod(mode)
      else await fs.chmod(path, mode)
    }
    if (attrs.atime !== undefined && attrs.mtime !== undefined) {
      if (fh !== undefined) await fh.utimes(attrs.atime, attrs.mtime)
      else await fs.utimes(path, attrs.atime, attrs.mtime)
    }
    if (attrs.uid !== undefined && attrs.gid !== undefined) {
      if (fh !== undefined) await fh.chown(attrs.uid, attrs.gid)
      else await fs.chown(path, attrs.uid, attrs.gid)
    }
  }

  sftp.on('OPEN', (id, filename, pflags, attrs) =>
    handle(id, async () => {
      const path = resolvePath(filename)
      const mode = (attrs as Attrs | undefined)?.mode
      let fh: FileHandle
      try {
        // Never a blocking open: opening a FIFO waits for its other end in
        // one of libuv's four threadpool threads, and four such opens stall
        // every fs call of the agent. Non-blocking, a FIFO opened for writing
        // with no reader fails at once (ENXIO) and fstat below refuses the rest.
        fh = await fs.open(
          path,
          openFlags(pflags) | fsConstants.O_NONBLOCK,
          mode === undefined ? 0o666 : mode & 0o7777,
        )
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENXIO' && (await isPipeOrSocket(path))) {
          sftp.status(id, STATUS.FAILURE, NOT_A_FILE)
          return
        }
        throw err
      }
      let kept = false
      try {
        const st = await fh.stat()
        // The session ended while this OPEN ran: nobody will CLOSE it.
        if (closed) return
        if (st.isFIFO() || st.isSocket()) {
          sftp.status(id, STATUS.FAILURE, NOT_A_FILE)
          return
        }
        if (st.isDirectory() && (pflags & FXF_WRITE) === 0) {
          // Reading a folder as a file: say so at OPEN, as sftp-server's read would.
          sftp.status(id, STATUS.FAILURE, 'Is a directory')
          return
        }
        const h = addHandle({ kind: 'file', fh, path })
        if (h === undefined) {
          sftp.status(id, STATUS.FAILURE, 'Too many open handles')
          return
        }
        kept = true
        sftp.handle(id, h)
      } finally {
        if (!kept) await fh.close()
      }
    }),
  )

  sftp.on('READ', (id, hbuf, offset, length) =>
    handle(id, async () => {
      const h = lookup(hbuf)
      if (h?.kind !== 'file') return badHandle(id)
      const want = Math.min(length, MAX_READ)
      if (!offsetInRange(offset, want)) return outOfRange(id)
      const buf = Buffer.allocUnsafe(want)
      const { bytesRead } = await h.fh.read(buf, 0, want, offset)
      if (bytesRead === 0) sftp.status(id, STATUS.EOF, 'End of file')
      else sftp.data(id, bytesRead === want ? buf : buf.subarray(0, bytesRead))
    }),
  )

  sftp.on('WRITE', (id, hbuf, offset, data) =>
    handle(id, async () => {
      const h = lookup(hbuf)
      if (h?.kind !== 'file') return badHandle(id)
      // Node writes at the file's current position when the position is not
      // a safe integer: an offset of 2^62 would land somewhere else.
      if (!offsetInRange(offset, data.length)) return outOfRange(id)
      let done = 0
      while (done < data.length) {
        const { bytesWritten } = await h.fh.write(data, done, data.length - done, offset + done)
        done += bytesWritten
      }
      ok(id)
    }),
  )

  sftp.on('CLOSE', (id, hbuf) =>
    handle(id, async () => {
      const key = hbuf.toString('hex')
      const h = handles.get(key)
      if (h === undefined) return badHandle(id)
      handles.delete(key)
      if (h.kind === 'file') await h.fh.close()
      else await h.dir.close().catch(() => undefined)
      ok(id)
    }),
  )

  sftp.on('FSTAT', (id, hbuf) =>
    handle(id, async () => {
      const h = lookup(hbuf)
      if (h === undefined) return badHandle(id)
      const st = h.kind === 'file' ? await h.fh.stat() : await fs.stat(h.path)
      sftp.attrs(id, toAttrs(st))
    }),
  )

  sftp.on('FSETSTAT', (id, hbuf, attrs) =>
    handle(id, async () => {
      const h = lookup(hbuf)
      if (h === undefined) return badHandle(id)
      await applyAttrs(h.path, attrs as Attrs, h.kind === 'file' ? h.fh : undefined)
      ok(id)
    }),
  )

  sftp.on('STAT', (id, path) =>
    handle(id, async () => {
      sftp.attrs(id, toAttrs(await fs.stat(resolvePath(path))))
    }),
  )

  sftp.on('LSTAT', (id, path) =>
    handle(id, async () => {
      sftp.attrs(id, toAttrs(await fs.lstat(resolvePath(path))))
    }),
  )

  sftp.on('SETSTAT', (id, path, attrs) =>
    handle(id, async () => {
      await applyAttrs(resolvePath(path), attrs as Attrs)
      ok(id)
    }),
  )

  sftp.on('OPENDIR', (id, path) =>
    handle(id, async () => {
      const full = resolvePath(path)
      const dir = await fs.opendir(full, { bufferSize: DIR_BATCH })
      if (closed) {
        // The session ended while this OPENDIR ran: nobody will CLOSE it.
        await dir.close()
        return
      }
      const h = addHandle({ kind: 'dir', dir, path: full, dotsSent: false, done: false })
      if (h === undefined) {
        await dir.close()
        sftp.status(id, STATUS.FAILURE, 'Too many open handles')
        return
      }
      sftp.handle(id, h)
    }),
  )

  sftp.on('READDIR', (id, hbuf) =>
    handle(id, async () => {
      const h = lookup(hbuf)
      if (h?.kind !== 'dir') return badHandle(id)
      const names: string[] = []
      if (!h.dotsSent) {
        h.dotsSent = true
        names.push('.', '..')
      }
      while (!h.done && names.length < DIR_BATCH) {
        const entry = await h.dir.read()
        if (entry === null) h.done = true
        else names.push(entry.name)
      }
      if (names.length === 0) {
        sftp.status(id, STATUS.EOF, 'End of file')
        return
      }
      const entries = await Promise.all(
        names.map(async (filename) => {
          const st = await fs.lstat(posix.join(h.path, filename)).catch(() => undefined)
          // An entry removed while listed is still named, without attributes.
          if (st === undefined) return { filename, longname: filename, attrs: NO_ATTRS }
          const attrs = toAttrs(st)
          return { filename, longname: longName(filename, attrs), attrs }
        }),
      )
      sftp.name(id, entries)
    }),
  )

  sftp.on('REMOVE', (id, path) =>
    handle(id, async () => {
      await fs.unlink(resolvePath(path))
      ok(id)
    }),
  )

  sftp.on('MKDIR', (id, path, attrs) =>
    handle(id, async () => {
      const mode = (attrs as Attrs | undefined)?.mode
      await fs.mkdir(resolvePath(path), { mode: mode === undefined ? 0o777 : mode & 0o7777 })
      ok(id)
    }),
  )

  sftp.on('RMDIR', (id, path) =>
    handle(id, async () => {
      await fs.rmdir(resolvePath(path))
      ok(id)
    }),
  )

  sftp.on('REALPATH', (id, path) =>
    handle(id, async () => {
      const full = await realPath(resolvePath(path))
      sftp.name(id, [{ filename: full, longname: full, attrs: NO_ATTRS }])
    }),
  )

  sftp.on('RENAME', (id, from, to) =>
    handle(id, async () => {
      const target = resolvePath(to)
      // SSH_FXP_RENAME must not replace an existing file (filexfer-02 §6.5).
      const exists = await fs.lstat(target).then(
        () => true,
        () => false,
      )
      if (exists) {
        sftp.status(id, STATUS.FAILURE, 'File exists')
        return
      }
      await fs.rename(resolvePath(from), target)
      ok(id)
    }),
  )

  sftp.on('READLINK', (id, path) =>
    handle(id, async () => {
      const target = await fs.readlink(resolvePath(path))
      sftp.name(id, [{ filename: target, longname: target, attrs: NO_ATTRS }])
    }),
  )

  // ssh2 swaps the arguments back for OpenSSH clients, which send them reversed.
  sftp.on('SYMLINK', (id, linkPath, targetPath) =>
    handle(id, async () => {
      await fs.symlink(targetPath, resolvePath(linkPath))
      ok(id)
    }),
  )

  sftp.on('EXTENDED', (id, name, data) =>
    handle(id, async () => {
      const args = sshStrings(data as Buffer | undefined)
      const str = (i: number): string => args[i]?.toString('utf8') ?? ''
      switch (name) {
        case 'posix-rename@openssh.com':
          await fs.rename(resolvePath(str(0)), resolvePath(str(1)))
          return ok(id)
        case 'hardlink@openssh.com':
          await fs.link(resolvePath(str(0)), resolvePath(str(1)))
          return ok(id)
        case 'fsync@openssh.com': {
          const h = args[0] === undefined ? undefined : lookup(args[0])
          if (h?.kind !== 'file') return badHandle(id)
          await h.fh.sync()
          return ok(id)
        }
        case 'expand-path@openssh.com': {
          const full = await realPath(resolvePath(expandTilde(str(0), home)))
          sftp.name(id, [{ filename: full, longname: full, attrs: NO_ATTRS }])
          return
        }
        default:
          sftp.status(id, STATUS.OP_UNSUPPORTED, `${name} is not supported`)
      }
    }),
  )

  const closeAll = (): void => {
    if (closed) return
    closed = true
    for (const h of handles.values()) {
      if (h.kind === 'file') void h.fh.close().catch(() => undefined)
      else void h.dir.close().catch(() => undefined)
    }
    handles.clear()
  }
  sftp.on('close', closeAll)
  // The client's EOF ends the session, as sftp-server exits on end of
  // input: the channel must close, or OpenSSH's sftp waits for it forever.
  sftp.on('end', () => {
    void queue.then(() => {
      closeAll()
      // exit-status 0 as sshd sends when sftp-server exits: without it
      // OpenSSH's ssh exits with -1 and scp reports a failure.
      const s = sftp as unknown as SftpInternals & {
        _protocol: { exitStatus(id: number, code: number): void }
      }
      if (s.outgoing.state === 'open') s._protocol.exitStatus(s.outgoing.id, 0)
      sftp.end()
    })
  })
  sftp.on('error', (err: Error) => {
    log.debug({ err: err.message }, 'sftp error')
    closeAll()
  })
}

/** Whether `path` is a FIFO or a socket (which a non-blocking open refuses with ENXIO). */
async function isPipeOrSocket(path: string): Promise<boolean> {
  const st = await fs.stat(path).catch(() => undefined)
  return st !== undefined && (st.isFIFO() || st.isSocket())
}

/** `~` and `~/x` as the user's home; `~user` is left for realpath to refuse. */
function expandTilde(path: string, home: string): string {
  if (path === '~') return home
  if (path.startsWith('~/')) return posix.join(home, path.slice(2))
  return path
}

/**
 * The canonical path, as sftp-server's realpath: symlinks resolved; a last
 * component that does not exist yet is kept (uploads name new files).
 */
async function realPath(full: string): Promise<string> {
  try {
    return await fs.realpath(full)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || full === '/') throw err
    return posix.join(await fs.realpath(dirname(full)), basename(full))
  }
}
