/**
 * The wire side of the agent's SFTP server (sftp.ts): status codes and
 * their errno mapping, open flags, EXTENDED request data, and the VERSION
 * answer that names OpenSSH's extensions.
 */
import { constants as fsConstants } from 'node:fs'
import type { SFTPWrapper } from 'ssh2'

/** SFTP v3 status codes (filexfer-02 §7). */
export const STATUS = {
  OK: 0,
  EOF: 1,
  NO_SUCH_FILE: 2,
  PERMISSION_DENIED: 3,
  FAILURE: 4,
  BAD_MESSAGE: 5,
  OP_UNSUPPORTED: 8,
} as const

/** SSH_FXF_* open flags. */
export const FXF_READ = 0x01
export const FXF_WRITE = 0x02
const FXF_APPEND = 0x04
const FXF_CREAT = 0x08
const FXF_TRUNC = 0x10
const FXF_EXCL = 0x20

/** OpenSSH extensions VERSION names; sftp.ts's EXTENDED handler serves each. */
const EXTENSIONS: [string, string][] = [
  ['posix-rename@openssh.com', '1'],
  ['hardlink@openssh.com', '1'],
  ['fsync@openssh.com', '1'],
  ['expand-path@openssh.com', '1'],
]

/** The SFTP status for a failed file system call, with its message. */
export function statusFor(err: unknown): { code: number; message: string } {
  const e = err as NodeJS.ErrnoException
  switch (e?.code) {
    case 'ENOENT':
    case 'ENOTDIR':
    case 'ELOOP':
    case 'ENAMETOOLONG':
      return { code: STATUS.NO_SUCH_FILE, message: 'No such file' }
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return { code: STATUS.PERMISSION_DENIED, message: 'Permission denied' }
    default:
      return { code: STATUS.FAILURE, message: e?.code ?? (e?.message || 'Failure') }
  }
}

/** fs open flags for SSH_FXF_* flags. */
export function openFlags(pflags: number): number {
  let flags: number
  if ((pflags & FXF_READ) !== 0 && (pflags & FXF_WRITE) !== 0) flags = fsConstants.O_RDWR
  else if ((pflags & FXF_WRITE) !== 0) flags = fsConstants.O_WRONLY
  else flags = fsConstants.O_RDONLY
  if ((pflags & FXF_APPEND) !== 0) flags |= fsConstants.O_APPEND
  if ((pflags & FXF_CREAT) !== 0) flags |= fsConstants.O_CREAT
  if ((pflags & FXF_TRUNC) !== 0) flags |= fsConstants.O_TRUNC
  if ((pflags & FXF_EXCL) !== 0) flags |= fsConstants.O_EXCL
  return flags
}

/**
 * Whether READ or WRITE of `length` bytes at `offset` stays within safe
 * integers. ssh2 hands over uint64 offsets as lossy Numbers, and Node reads
 * or writes at the file's current position for a position it cannot take.
 */
export function offsetInRange(offset: unknown, length: number): boolean {
  return (
    typeof offset === 'number' &&
    Number.isSafeInteger(offset) &&
    offset >= 0 &&
    Number.isSafeInteger(offset + length)
  )
}

/** Reads the SSH strings packed in an EXTENDED request's data. */
export function sshStrings(data: Buffer | undefined): Buffer[] {
  const out: Buffer[] = []
  let p = 0
  while (data !== undefined && p + 4 <= data.length) {
    const len = data.readUInt32BE(p)
    if (p + 4 + len > data.length) break
    out.push(data.subarray(p + 4, p + 4 + len))
    p += 4 + len
  }
  return out
}

export interface SftpInternals {
  _protocol: { channelData(id: number, data: Buffer): void }
  outgoing: { id: number; window: number; state: string }
}

/**
 * Makes the VERSION answer name EXTENSIONS. ssh2 answers INIT itself with
 * a fixed VERSION naming none, so OpenSSH clients would fall back to plain
 * RENAME (no overwrite) and could not expand `~`. The one channel write of
 * that VERSION packet (9 bytes, type 2) is swapped for ours; every other
 * write goes through untouched, and the shim removes itself after it.
 */
export function advertiseExtensions(sftp: SFTPWrapper): void {
  const s = sftp as unknown as SftpInternals
  const real = s._protocol
  const parts: Buffer[] = [Buffer.from([2, 0, 0, 0, 3])]
  for (const [name, data] of EXTENSIONS) {
    for (const text of [name, data]) {
      const len = Buffer.alloc(4)
      len.writeUInt32BE(Buffer.byteLength(text))
      parts.push(len, Buffer.from(text))
    }
  }
  const body = Buffer.concat(parts)
  const version = Buffer.concat([Buffer.alloc(4), body])
  version.writeUInt32BE(body.length, 0)

  s._protocol = new Proxy(real, {
    get(target, key) {
      if (key === 'channelData') {
        return (id: number, data: Buffer) => {
          s._protocol = real
          const extra = version.length - data.length
          if (data.length === 9 && data[4] === 2 && s.outgoing.window >= extra) {
            s.outgoing.window -= extra
            real.channelData(id, version)
          } else {
            real.channelData(id, data)
          }
        }
      }
      const value = Reflect.get(target, key) as unknown
      return typeof value === 'function' ? value.bind(target) : value
    },
  })
}
