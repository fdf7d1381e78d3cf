/**
 * Runs one `terraform` command with a clean environment, streaming its output
 * line by line, and stops it when asked: SIGINT first (Terraform then stops
 * gracefully and saves its state), SIGKILL to its whole process group when
 * it has not exited 10 s later.
 */
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { execa } from 'execa'
import { SECOND, terraformBinary } from '../sdk/config.ts'
import { LineSplitter } from './lines.ts'

export const FORCE_KILL_AFTER = 10 * SECOND

/** Passed on from our own environment when set: locale, time zone, temp folder, who we are. */
const INHERITED = ['LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'USER', 'LOGNAME', 'SHELL']

/** Passed on when they name something that exists: the operator's Terraform setup. */
const INHERITED_PATHS = ['TF_CLI_CONFIG_FILE', 'TF_PLUGIN_CACHE_DIR']

/**
 * Terraform's whole environment: nothing of ours beyond PATH, HOME and the
 * few harmless variables above, plus TF_VAR_<name> for each variable.
 */
export function terraformEnv(variables: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    // The user's HOME, so ~/.terraformrc and ~/.terraform.d/plugins (a
    // provider mirror on an offline machine) keep working.
    HOME: process.env.HOME ?? homedir(),
  }
  for (const name of INHERITED) {
    const value = process.env[name]
    if (value !== undefined && value !== '') env[name] = value
  }
  for (const name of INHERITED_PATHS) {
    const value = process.env[name]
    if (value !== undefined && value !== '' && existsSync(value)) env[name] = value
  }
  for (const [name, value] of Object.entries(variables)) env[`TF_VAR_${name}`] = value
  env.TF_IN_AUTOMATION = '1'
  env.TF_INPUT = '0'
  env.CHECKPOINT_DISABLE = '1'
  return env
}

export interface RunOptions {
  cwd: string
  env: Record<string, string>
  signal?: AbortSignal
  onLine: (source: 'stdout' | 'stderr' | 'provisioner', text: string) => void
  /** Where to cut an over-long line; see Redactor.safeCut. */
  safeCut?: (text: string, at: number) => number
}

export interface RunOutcome {
  /** Terraform's exit status, when it exited by itself. */
  exitCode?: number
  /** The signal that ended it, when one did. */
  signal?: string
  /** True when options.signal stopped it. */
  canceled: boolean
  /** Why terraform could not be started at all. */
  spawnError?: string
}

/** Process ids of running terraform commands, interrupted if we exit first. */
const running = new Set<number>()
let exitHookInstalled = false

function interruptAllOnExit(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const pid of running) signalProcess(pid, 'SIGINT')
  })
}

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // Already gone.
  }
}

/** Runs `terraform <args>`; never throws for anything terraform does. */
export async function runTerraform(args: string[], options: RunOptions): Promise<RunOutcome> {
  const { onLine } = options
  const subprocess = execa(terraformBinary(), args, {
    cwd: options.cwd,
    env: options.env,
    extendEnv: false,
    stdin: 'ignore',
    buffer: false,
    reject: false,
    // Its own process group, so that a forced stop also reaches the
    // commands its local-exec provisioners started.
    detached: true,
    forceKillAfterDelay: false,
  })

  const pid = subprocess.pid
  const stdout = new LineSplitter((line) => onLine('stdout', line), options.safeCut)
  const stderr = new LineSplitter((line) => onLine('stderr', line), options.safeCut)
  subprocess.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk))
  subprocess.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk))

  let canceled = false
  let forceTimer: NodeJS.Timeout | undefined
  const cancel = (): void => {
    if (canceled || pid === undefined) return
    canceled = true
    onLine('provisioner', 'canceled: interrupting terraform')
    signalProcess(pid, 'SIGINT')
    forceTimer = setTimeout(() => {
      onLine(
        'provisioner',
        `terraform did not stop within ${FORCE_KILL_AFTER / SECOND} s: killing it`,
      )
      signalProcess(-pid, 'SIGKILL')
    }, FORCE_KILL_AFTER)
  }

  if (pid !== undefined) {
    running.add(pid)
    interruptAllOnExit()
    if (options.signal?.aborted === true) cancel()
    else options.signal?.addEventListener('abort', cancel, { once: true })
  }

  try {
    const result = await subprocess
    stdout.end()
    stderr.end()
    if (pid === undefined || result.code === 'ENOENT' || result.code === 'EACCES') {
      return {
        canceled,
        spawnError: result.originalMessage ?? result.shortMessage ?? 'spawn failed',
      }
    }
    return { exitCode: result.exitCode, signal: result.signal, canceled }
  } finally {
    clearTimeout(forceTimer)
    options.signal?.removeEventListener('abort', cancel)
    if (pid !== undefined) {
      running.delete(pid)
      // After a cancel, nothing Terraform started may outlive it (processes
      // that left its group, such as a setsid'd workspace agent, are safe).
      if (canceled) signalProcess(-pid, 'SIGKILL')
    }
  }
}
