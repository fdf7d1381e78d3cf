/**
 * Process inspection for the provisioner's tests (Linux /proc).
 */
import { readdirSync, readFileSync } from 'node:fs'

export interface ProcessInfo {
  pid: number
  pgid: number
  /** The argv, joined with spaces. */
  cmdline: string
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

/** Every running process, zombies left out (they linger where pid 1 does not reap). */
export function liveProcesses(): ProcessInfo[] {
  const out: ProcessInfo[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = read(`/proc/${entry}/stat`)
    if (stat === undefined) continue
    // Fields after the command name, which ends at the last ")".
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (fields[0] === 'Z' || fields[0] === 'X') continue
    const cmdline = (read(`/proc/${entry}/cmdline`) ?? '').split('\0').join(' ').trim()
    out.push({ pid: Number(entry), pgid: Number(fields[2]), cmdline })
  }
  return out
}

/** The live processes of process group `pgid`, its leader included. */
export function groupMembers(pgid: number): ProcessInfo[] {
  return liveProcesses().filter((p) => p.pgid === pgid || p.pid === pgid)
}

/** The environment process `pid` started with, or undefined when it is gone. */
export function processEnvironment(pid: number): Record<string, string> | undefined {
  const raw = read(`/proc/${pid}/environ`)
  if (raw === undefined) return undefined
  const env: Record<string, string> = {}
  for (const entry of raw.split('\0')) {
    const eq = entry.indexOf('=')
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1)
  }
  return env
}
