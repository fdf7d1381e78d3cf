/**
 * What Linux's /proc tells about a process: enough to recognise a terraform
 * a crashed coordinator left running, and to wait for it and its process
 * group to end. Elsewhere (no /proc) every lookup answers "unknown", and
 * callers then leave processes alone rather than signal one they cannot
 * identify.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { basename } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export interface ProcInfo {
  pid: number
  /** One letter: R, S, D, Z, T, ... */
  state: string
  pgid: number
  /** Clock ticks after boot at which it started: with the pid, names it uniquely. */
  startTime: string
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

/** Whether this system has a /proc to look processes up in. */
export function hasProc(): boolean {
  return read('/proc/self/stat') !== undefined
}

/** Process `pid` as /proc/<pid>/stat describes it, or undefined when it is gone. */
export function procInfo(pid: number): ProcInfo | undefined {
  const stat = read(`/proc/${pid}/stat`)
  if (stat === undefined) return undefined
  // The fields after the command name, which ends at the last ")".
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const [state, , pgid] = fields
  const startTime = fields[19]
  if (state === undefined || pgid === undefined || startTime === undefined) return undefined
  return { pid, state, pgid: Number(pgid), startTime }
}

/** Its argv; empty when unreadable (gone, a kernel thread, another user's). */
export function procArgv(pid: number): string[] {
  const raw = read(`/proc/${pid}/cmdline`)
  if (raw === undefined || raw === '') return []
  return raw.replace(/\0$/, '').split('\0')
}

/** Its working directory, when readable. */
export function procCwd(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`)
  } catch {
    return undefined
  }
}

/** Exists and is not a zombie (a zombie lingers where nobody reaps it, but runs nothing). */
export function isLive(info: ProcInfo | undefined): info is ProcInfo {
  return info !== undefined && info.state !== 'Z' && info.state !== 'X'
}

/** Every live process. */
export function liveProcs(): ProcInfo[] {
  let entries: string[]
  try {
    entries = readdirSync('/proc')
  } catch {
    return []
  }
  const out: ProcInfo[] = []
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    const info = procInfo(Number(entry))
    if (isLive(info)) out.push(info)
  }
  return out
}

/** The live members of process group `pgid`. */
export function groupMembers(pgid: number): ProcInfo[] {
  return liveProcs().filter((p) => p.pgid === pgid)
}

/** Whether `argv` runs `binary` (directly, or as the script of an interpreter). */
export function runsBinary(argv: string[], binary: string): boolean {
  const name = basename(binary)
  return argv.slice(0, 2).some((arg) => arg === binary || basename(arg) === name)
}

/** Waits up to `ms` for `done()` to hold, checking every 100 ms; true if it did. */
export async function waitFor(done: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (done()) return true
    if (Date.now() >= deadline) return false
    await sleep(100)
  }
}

/** Sends `signal` to a process (or, with a negative id, a group); false when it is gone. */
export function signalProcess(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}
