/**
 * Runs one `terraform` command with a clean environment, streaming its output
 * line by line, and stops it when asked: SIGINT first (Terraform then stops
 * gracefully and saves its state), SIGKILL to its whole process group when
 * it has not exited 10 s later.
 *
 * Terraform writes its output to files in the working directory, which are
 * followed as they grow, rather than to pipes: if the coordinator dies
 * mid-build, a pipe's reader is gone and Terraform's next line would kill it
 * with SIGPIPE before it saves its state. With files it runs to the end and
 * leaves its state behind, and the process record written next to them lets
 * the next coordinator find it (recover.ts).
 */
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { SECOND, terraformBinary } from '../sdk/config.ts'
import { LineSplitter } from './lines.ts'
import { procInfo, signalProcess } from './processes.ts'
import { PROCESS_FILE, STDERR_FILE, STDOUT_FILE } from './workdir.ts'

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
  /** The working directory; it must hold the provisioner's folder (workdir.ts RUN_DIR). */
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

/** What PROCESS_FILE holds while (and after) a terraform command runs. */
export interface ProcessRecord {
  pid: number
  /** Its process group: the pid, as it leads a session of its own. */
  pgid: number
  /** From /proc/<pid>/stat, when there is one: tells a reused pid apart. */
  startTime?: string
  /** The binary it runs. */
  binary: string
  /** Its working directory. */
  cwd: string
}

/** How often the output files are read while terraform runs, in ms. */
const FOLLOW_INTERVAL = 100

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

/** Reads a file that another process appends to, from where it left off. */
class Follower {
  private position = 0
  private readonly buffer = Buffer.allocUnsafe(64 * 1024)
  private readonly file: FileHandle
  private readonly lines: LineSplitter

  constructor(file: FileHandle, lines: LineSplitter) {
    this.file = file
    this.lines = lines
  }

  /** Passes on everything written since the last call. */
  async drain(): Promise<void> {
    for (;;) {
      const { bytesRead } = await this.file.read(this.buffer, 0, this.buffer.length, this.position)
      if (bytesRead === 0) return
      this.position += bytesRead
      this.lines.push(this.buffer.subarray(0, bytesRead))
    }
  }
}

interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
  error?: Error
}

/** Runs `terraform <args>`; never throws for anything terraform does. */
export async function runTerraform(args: string[], options: RunOptions): Promise<RunOutcome> {
  const { onLine } = options
  const binary = terraformBinary()
  const stdoutLines = new LineSplitter((line) => onLine('stdout', line), options.safeCut)
  const stderrLines = new LineSplitter((line) => onLine('stderr', line), options.safeCut)

  const files: FileHandle[] = []
  const openFile = async (path: string, flags: string): Promise<FileHandle> => {
    const file = await open(join(options.cwd, path), flags, 0o600)
    files.push(file)
    return file
  }

  let canceled = false
  let forceTimer: NodeJS.Timeout | undefined
  let pid: number | undefined
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
      signalProcess(-pid!, 'SIGKILL')
    }, FORCE_KILL_AFTER)
  }

  try {
    const stdoutFile = await openFile(STDOUT_FILE, 'w')
    const stderrFile = await openFile(STDERR_FILE, 'w')
    const devNull = await open('/dev/null', 'r+')
    files.push(devNull)
    const followers = [
      new Follower(await openFile(STDOUT_FILE, 'r'), stdoutLines),
      new Follower(await openFile(STDERR_FILE, 'r'), stderrLines),
    ]

    const exited = new Promise<Exit>((resolve) => {
      let child
      try {
        child = spawn(binary, args, {
          cwd: options.cwd,
          env: options.env,
          stdio: childStdio(stdoutFile.fd, stderrFile.fd, devNull.fd),
          // Its own session and process group, so that a forced stop also
          // reaches the commands its local-exec provisioners started.
          detached: true,
        })
      } catch (error) {
        resolve({ code: null, signal: null, error: error as Error })
        return
      }
      child.once('error', (error) => resolve({ code: null, signal: null, error }))
      child.once('exit', (code, signal) => resolve({ code, signal }))
      pid = child.pid
      if (pid !== undefined) recordProcess(pid, binary, options.cwd)
    })
    // The child holds its own copies of the output files.
    await Promise.all([stdoutFile.close(), stderrFile.close()])

    if (pid !== undefined) {
      running.add(pid)
      interruptAllOnExit()
      if (options.signal?.aborted === true) cancel()
      else options.signal?.addEventListener('abort', cancel, { once: true })
    }

    // Follow the output until terraform exits, then read what is left.
    let ended = false
    void exited.then(() => (ended = true))
    while (!ended) {
      for (const follower of followers) await follower.drain()
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        exited,
        new Promise((resolve) => (timer = setTimeout(resolve, FOLLOW_INTERVAL))),
      ])
      clearTimeout(timer)
    }
    const exit = await exited
    for (const follower of followers) await follower.drain()
    stdoutLines.end()
    stderrLines.end()

    if (pid === undefined || exit.error !== undefined) {
      return { canceled, spawnError: exit.error?.message ?? 'spawn failed' }
    }
    const outcome: RunOutcome = { canceled }
    if (exit.code !== null) outcome.exitCode = exit.code
    if (exit.signal !== null) outcome.signal = exit.signal
    return outcome
  } finally {
    clearTimeout(forceTimer)
    options.signal?.removeEventListener('abort', cancel)
    await Promise.allSettled(files.map((file) => file.close()))
    if (pid !== undefined) {
      running.delete(pid)
      // After a cancel, nothing Terraform started may outlive it (processes
      // that left its group, such as a setsid'd workspace agent, are safe).
      if (canceled) signalProcess(-pid, 'SIGKILL')
    }
  }
}

/** O_CLOEXEC on Linux (all but a few exotic architectures). */
const O_CLOEXEC = 0o2000000

/**
 * Our descriptors above 2 that a child would inherit: those opened without
 * O_CLOEXEC, as LevelDB opens the store's files. Empty without /proc.
 */
export function inheritableDescriptors(): number[] {
  let entries: string[]
  try {
    entries = readdirSync('/proc/self/fdinfo')
  } catch {
    return []
  }
  const out: number[] = []
  for (const entry of entries) {
    const fd = Number(entry)
    if (!Number.isInteger(fd) || fd <= 2) continue
    let info: string
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
    } catch {
      continue // closed meanwhile, or the directory's own descriptor
    }
    const flags = /^flags:\s*([0-7]+)/m.exec(info)?.[1]
    if (flags !== undefined && (parseInt(flags, 8) & O_CLOEXEC) === 0) out.push(fd)
  }
  return out.sort((a, b) => a - b)
}

/**
 * Terraform's descriptors: no input, output to the files, and /dev/null in
 * place of every descriptor of ours it would otherwise inherit (Node cannot
 * close them in the child, but can replace them), so that neither it nor
 * what its provisioners start, such as a workspace agent, holds the store
 * open.
 */
function childStdio(stdout: number, stderr: number, devNull: number): (number | 'ignore')[] {
  const stdio: (number | 'ignore')[] = ['ignore', stdout, stderr]
  for (const fd of inheritableDescriptors()) {
    while (stdio.length < fd) stdio.push('ignore')
    stdio[fd] = devNull
  }
  return stdio
}

/** Writes PROCESS_FILE, at once: the coordinator may die any moment now. */
function recordProcess(pid: number, binary: string, cwd: string): void {
  const record: ProcessRecord = { pid, pgid: pid, binary, cwd }
  const startTime = procInfo(pid)?.startTime
  if (startTime !== undefined) record.startTime = startTime
  try {
    writeFileSync(join(cwd, PROCESS_FILE), JSON.stringify(record) + '\n', { mode: 0o600 })
  } catch {
    // Only recovery after a crash needs it, and it also looks for terraform by its folder.
  }
}
