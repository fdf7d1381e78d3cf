/**
 * Cleaning up after a coordinator that died mid-build. Its terraform runs
 * on in a session of its own (and, writing its output to files, is not
 * killed by the pipes closing), so a build's working directory may still
 * be in use when the next coordinator starts. `recoverWorkdir` finds the
 * terraform still running there, interrupts it as a cancel would (SIGINT,
 * SIGKILL to its process group 10 s later), waits for it to end, reads the
 * state it left and removes the directory.
 *
 * A process is signalled only once /proc shows it is that terraform: the
 * pid from the process record, started at the recorded time, running the
 * terraform binary, in that working directory. Without /proc nothing is
 * signalled.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs'
import { join } from 'node:path'
import { SECOND, terraformBinary } from '../sdk/config.ts'
import {
  groupMembers,
  hasProc,
  isLive,
  liveProcs,
  procArgv,
  procCwd,
  procInfo,
  runsBinary,
  signalProcess,
  waitFor,
} from './processes.ts'
import { FORCE_KILL_AFTER, type ProcessRecord } from './terraform.ts'
import {
  checkBuildId,
  keepWorkdirs,
  PROCESS_FILE,
  readState,
  removeWorkdir,
  workdirPath,
} from './workdir.ts'

/** How long to wait for a killed process group to be gone, in ms. */
const KILL_WAIT = 5 * SECOND

export interface RecoverOptions {
  /** Progress and problems, one line each, for the build's log. */
  onLog: (text: string) => void
  /** How long terraform may take to stop after SIGINT, in ms; default 10 s. */
  graceMs?: number
}

export interface RecoverResult {
  /** Whether the build's working directory was there. */
  found: boolean
  /** Pids of terraform commands that were still running and were stopped. */
  stopped: number[]
  /** The state Terraform left in the working directory, if any. */
  state?: Buffer
  /** Whether the working directory is gone now. */
  removed: boolean
}

function readRecord(dir: string): Partial<ProcessRecord> | undefined {
  try {
    const record = JSON.parse(readFileSync(join(dir, PROCESS_FILE), 'utf8')) as unknown
    return typeof record === 'object' && record !== null ? record : undefined
  } catch {
    return undefined
  }
}

function samePath(a: string | undefined, b: string): boolean {
  if (a === undefined) return false
  if (a === b) return true
  try {
    return realpathSync(a) === realpathSync(b)
  } catch {
    return false
  }
}

/**
 * Terraform processes running in `dir`: the recorded one, if it checks out,
 * and any other terraform whose working directory it is (one started just
 * before the crash, before its record was written).
 */
export function terraformIn(dir: string): number[] {
  if (!hasProc()) return []
  const record = readRecord(dir)
  const binary = typeof record?.binary === 'string' ? record.binary : terraformBinary()
  const found = new Set<number>()

  const isOurs = (pid: number, startTime?: string): boolean => {
    const info = procInfo(pid)
    if (!isLive(info)) return false
    if (startTime !== undefined && info.startTime !== startTime) return false
    return runsBinary(procArgv(pid), binary) && samePath(procCwd(pid), dir)
  }

  if (typeof record?.pid === 'number' && Number.isInteger(record.pid) && record.pid > 1) {
    const startTime = typeof record.startTime === 'string' ? record.startTime : undefined
    if (isOurs(record.pid, startTime)) found.add(record.pid)
  }
  for (const p of liveProcs()) {
    if (p.pid !== process.pid && !found.has(p.pid) && isOurs(p.pid)) found.add(p.pid)
  }
  return [...found]
}

/** Interrupts terraform `pid`, kills its group if it lingers; true once all of it is gone. */
async function stopTerraform(pid: number, graceMs: number, log: (text: string) => void) {
  const startTime = procInfo(pid)?.startTime
  // The same process, not a new one that got its pid.
  const running = (): boolean => {
    const info = procInfo(pid)
    return isLive(info) && info.startTime === startTime
  }
  // It leads its own session and group (it was started detached); a group
  // it does not lead may hold processes that are none of ours.
  const leadsGroup = procInfo(pid)?.pgid === pid

  log(`terraform (process ${pid}) is still running: interrupting it`)
  signalProcess(pid, 'SIGINT')
  if (!(await waitFor(() => !running(), graceMs))) {
    log(`terraform did not stop within ${graceMs / SECOND} s: killing it`)
    signalProcess(leadsGroup ? -pid : pid, 'SIGKILL')
    if (!(await waitFor(() => !running(), KILL_WAIT))) return false
  }
  if (!leadsGroup) return true
  // What its local-exec provisioners started in its group goes with it, as
  // after a cancel.
  signalProcess(-pid, 'SIGKILL')
  return waitFor(() => groupMembers(pid).length === 0, KILL_WAIT)
}

/**
 * Recovers build `buildId`'s working directory under `workRoot`, if it is
 * there: stops the terraform still running in it, reads the state it left
 * and removes it (kept with CODER_MESH_KEEP_WORKDIRS=1, and while anything
 * still runs there).
 */
export async function recoverWorkdir(
  workRoot: string,
  buildId: string,
  options: RecoverOptions,
): Promise<RecoverResult> {
  checkBuildId(buildId)
  const dir = workdirPath(workRoot, buildId)
  if (!existsSync(dir)) return { found: false, stopped: [], removed: true }

  const graceMs = options.graceMs ?? FORCE_KILL_AFTER
  const stopped: number[] = []
  let clean = true
  for (const pid of terraformIn(dir)) {
    stopped.push(pid)
    if (!(await stopTerraform(pid, graceMs, options.onLog))) {
      options.onLog(`terraform (process ${pid}) or a process it started survived SIGKILL`)
      clean = false
    }
  }

  const result: RecoverResult = { found: true, stopped, removed: false }
  try {
    const found = await readState(dir)
    if (found !== undefined) result.state = found.state
  } catch (error) {
    options.onLog(`cannot read the state in ${dir}: ${(error as Error).message}`)
  }

  if (!clean) {
    options.onLog(`working directory kept, as terraform still runs there: ${dir}`)
  } else if (keepWorkdirs()) {
    options.onLog(`working directory kept: ${dir}`)
  } else {
    try {
      await removeWorkdir(dir)
      result.removed = true
    } catch (error) {
      options.onLog(`cannot remove the working directory: ${(error as Error).message}`)
    }
  }
  return result
}
