/**
 * The `ls -l` style "longname" of SFTP v3 READDIR answers, which OpenSSH's
 * sftp prints for `ls -l`: mode string, links, owner, group, size, date and
 * name, laid out as sftp-server's ls_file() does.
 */
import { readFileSync } from 'node:fs'

/** File attributes as SFTP v3 carries them (times in seconds). */
export interface Attrs {
  mode?: number
  uid?: number
  gid?: number
  size?: number
  atime?: number
  mtime?: number
  nlink?: number
}

const SIX_MONTHS_S = 182 * 24 * 3600
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']

let names: { users: Map<number, string>; groups: Map<number, string> } | undefined

/** uid and gid names from /etc/passwd and /etc/group, read once. */
function idNames(): { users: Map<number, string>; groups: Map<number, string> } {
  if (names !== undefined) return names
  const read = (file: string): Map<number, string> => {
    const map = new Map<number, string>()
    try {
      for (const line of readFileSync(file, 'utf8').split('\n')) {
        const [name, , id] = line.split(':')
        if (name !== undefined && name !== '' && id !== undefined) map.set(Number(id), name)
      }
    } catch {
      // No such database (a minimal image): numbers are shown.
    }
    return map
  }
  names = { users: read('/etc/passwd'), groups: read('/etc/group') }
  return names
}

/** `drwxr-xr-x` for a mode, set-id and sticky bits included. */
export function modeString(mode: number): string {
  const type = mode & 0o170000
  const kind =
    type === 0o040000
      ? 'd'
      : type === 0o120000
        ? 'l'
        : type === 0o020000
          ? 'c'
          : type === 0o060000
            ? 'b'
            : type === 0o010000
              ? 'p'
              : type === 0o140000
                ? 's'
                : '-'
  const bit = (mask: number, ch: string): string => ((mode & mask) !== 0 ? ch : '-')
  const exec = (x: number, special: number, on: string, off: string): string => {
    const hasX = (mode & x) !== 0
    if ((mode & special) !== 0) return hasX ? on : off
    return hasX ? 'x' : '-'
  }
  return (
    kind +
    bit(0o400, 'r') +
    bit(0o200, 'w') +
    exec(0o100, 0o4000, 's', 'S') +
    bit(0o040, 'r') +
    bit(0o020, 'w') +
    exec(0o010, 0o2000, 's', 'S') +
    bit(0o004, 'r') +
    bit(0o002, 'w') +
    exec(0o001, 0o1000, 't', 'T')
  )
}

function dateString(mtime: number, now: number): string {
  const d = new Date(mtime * 1000)
  const month = MONTHS[d.getMonth()]!
  const day = String(d.getDate()).padStart(2, ' ')
  if (Math.abs(now - mtime) < SIX_MONTHS_S) {
    const hh = String(d.getHours()).padStart(2, '0')
    const mm = String(d.getMinutes()).padStart(2, '0')
    return `${month} ${day} ${hh}:${mm}`
  }
  return `${month} ${day}  ${d.getFullYear()}`
}

/** The longname of `filename` with `attrs`. */
export function longName(filename: string, attrs: Attrs, now = Date.now() / 1000): string {
  const { users, groups } = idNames()
  const user = users.get(attrs.uid ?? -1) ?? String(attrs.uid ?? 0)
  const group = groups.get(attrs.gid ?? -1) ?? String(attrs.gid ?? 0)
  return [
    modeString(attrs.mode ?? 0),
    String(attrs.nlink ?? 1).padStart(4, ' '),
    user.padEnd(8, ' '),
    group.padEnd(8, ' '),
    String(attrs.size ?? 0).padStart(8, ' '),
    dateString(attrs.mtime ?? 0, now),
    filename,
  ].join(' ')
}
