/**
 * Medians and spreads of repeated measurements, and the machine they were
 * taken on. Every figure the bench reports is the median of several runs
 * with its min–max spread, so one disturbed run (the machine is shared)
 * shows as spread instead of moving the figure.
 */
import { readFileSync } from 'node:fs'
import { cpus, freemem, loadavg, release, totalmem } from 'node:os'

export interface Summary {
  median: number
  min: number
  max: number
  /** How many values. */
  n: number
}

/** The q-quantile (0..1) by nearest rank; NaN for no values. */
export function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}

export function summarize(values: readonly number[]): Summary {
  return {
    median: median(values),
    min: values.length === 0 ? NaN : Math.min(...values),
    max: values.length === 0 ? NaN : Math.max(...values),
    n: values.length,
  }
}

/** The median; the mean of the middle two for an even count. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  if (sorted.length === 0) return NaN
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Runs `once` `runs` times in a row and summarizes what it returns. */
export async function repeat(runs: number, once: () => Promise<number>): Promise<Summary> {
  const values: number[] = []
  for (let i = 0; i < runs; i++) values.push(await once())
  return summarize(values)
}

export interface Machine {
  cpu: string
  cores: number
  memoryGiB: number
  kernel: string
  node: string
  /** 1-, 5- and 15-minute load averages when the bench started. */
  load: [number, number, number]
}

export function machine(): Machine {
  const [l1 = 0, l5 = 0, l15 = 0] = loadavg()
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: cpus().length,
    memoryGiB: totalmem() / 2 ** 30,
    kernel: release(),
    node: process.version,
    load: [l1, l5, l15],
  }
}

/** Free memory in GiB, for the report's context. */
export function freeGiB(): number {
  return freemem() / 2 ** 30
}

/** Resident memory of a process, in MiB (from /proc; NaN when it is gone). */
export function rssMiB(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]
    return kb === undefined ? NaN : Number(kb) / 1024
  } catch {
    return NaN
  }
}

/** CPU time a process has used (user + system), in seconds. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which may hold spaces: utime and stime
    // are fields 14 and 15 of the whole line, in clock ticks (100 a second
    // on Linux, which is what sysconf(_SC_CLK_TCK) gives on every arch Node runs).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return NaN
  }
}

/** Read and write system calls `pid` has made so far (/proc/PID/io), or NaN. */
export function syscallCount(pid: number): number {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8')
    const field = (name: string): number =>
      Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1])
    return field('syscr') + field('syscw')
  } catch {
    return NaN
  }
}
