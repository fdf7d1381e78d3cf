/**
 * The user and processes side of SSH sessions: which shell and home folder a
 * session gets, its environment, and ending every process a session started.
 *
 * Every session's first process leads a session of its own (`setsid`: Node's
 * `detached` spawn for pipes, node-pty for terminals), so "the processes the
 * session started" are exactly the processes whose session id is that pid,
 * whatever process groups job control made inside it.
 */
import { accessSync, constants as fsConstants, readdirSync, readFileSync, statSync } from 'node:fs'
import { constants as osConstants, homedir, userInfo } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { childEnvironment } from '../sdk/config.ts'

/** How long processes get between SIGHUP and SIGKILL when a session ends, in ms. */
export const KILL_GRACE_MS = 3000

export interface SessionUser {
  name: string
  home: string
  /** The login shell: an absolute path to an executable. */
  shell: string
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK)
    return statSync(file).isFile()
  } catch {
    return false
  }
}

function isUsableDir(dir: string): boolean {
  try {
    accessSync(dir, fsConstants.R_OK | fsConstants.X_OK)
    return statSync(dir).isDirectory()
  } catch {
    return false
  }
}

/** A shell that refuses logins is no shell for a session. */
function isLoginShell(file: string | undefined): file is string {
  if (file === undefined || file === '' || !file.startsWith('/')) return false
  if (/\/(nologin|false)$/.test(file)) return false
  return isExecutable(file)
}

/**
 * The user sessions run as (the agent's own user): login shell from the
 * password database, else $SHELL, /bin/bash, /bin/sh; home from os.homedir()
 * unless it is unusable, then the agent's working directory.
 */
export function sessionUser(): SessionUser {
  let info: { username: string; shell: string | null } | undefined
  try {
    info = userInfo()
  } catch {
    // No password entry (a container run with an arbitrary uid): use the environment.
    info = undefined
  }
  const name =
    info?.username ?? process.env.USER ?? process.env.LOGNAME ?? String(process.getuid?.())

  const candidates = [info?.shell ?? undefined, process.env.SHELL, '/bin/bash', '/bin/sh']
  const shell = candidates.find(isLoginShell) ?? '/bin/sh'

  let home: string
  try {
    home = homedir()
  } catch {
    home = ''
  }
  if (!isUsableDir(home)) home = process.cwd()

  return { name, home, shell }
}

/**
 * Variables a client may set with an `env` request, as sshd's AcceptEnv in
 * Debian's sshd_config plus what terminals and git send (SendEnv): locale,
 * terminal hints, time zone and git's protocol version. Anything else could
 * change how the session's programs run (LD_PRELOAD, PATH, BASH_ENV).
 */
const CLIENT_ENV_NAMES = new Set([
  'LANG',
  'LANGUAGE',
  'TERM',
  'COLORTERM',
  'NO_COLOR',
  'TERM_PROGRAM',
  'TERM_PROGRAM_VERSION',
  'TZ',
  'GIT_PROTOCOL',
])

/** Whether a client may set `key` to `value` with an `env` request (see CLIENT_ENV_NAMES). */
export function isAllowedClientEnv(key: string, value: string): boolean {
  if (value.length > 4096 || value.includes('\0')) return false
  return CLIENT_ENV_NAMES.has(key) || /^LC_[A-Z]+$/.test(key)
}

export interface SessionEnvInit {
  user: SessionUser
  /** Variables the client set with `env` requests (already allowed). */
  clientEnv: Record<string, string>
  /** TERM for a PTY session; undefined for pipes (then TERM is removed). */
  term?: string
}

/**
 * The environment of a session's process: the agent's environment without
 * its secrets, the user's HOME/USER/LOGNAME/SHELL, the client's locale, and
 * LC_CTYPE=C.UTF-8 when nothing names a locale (so UTF-8 output is not
 * mangled by a C locale).
 */
export function sessionEnvironment(init: SessionEnvInit): Record<string, string> {
  const env = childEnvironment({
    HOME: init.user.home,
    USER: init.user.name,
    LOGNAME: init.user.name,
    SHELL: init.user.shell,
  })
  delete env.TERM
  Object.assign(env, init.clientEnv)
  if (init.term !== undefined) env.TERM = init.term
  if (!Object.keys(env).some((k) => k === 'LANG' || k.startsWith('LC_'))) env.LC_CTYPE = 'C.UTF-8'
  return env
}

/** Terminal names are passed through when they look like one. */
export function sanitizeTerm(term: string | undefined): string {
  return term !== undefined && /^[A-Za-z0-9._+-]{1,64}$/.test(term) ? term : 'xterm-256color'
}

/** A terminal dimension clamped to 1..1000, or undefined when it is not a number. */
export function clampDimension(value: unknown): number | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined
  return Math.min(1000, Math.max(1, Math.trunc(value)))
}

/** The signal's name without `SIG` for a signal number, e.g. 15 -> TERM. */
export function signalName(signal: number | string | null | undefined): string | undefined {
  if (signal === null || signal === undefined || signal === 0) return undefined
  if (typeof signal === 'string') return signal.replace(/^SIG/, '')
  const entry = Object.entries(osConstants.signals).find(([, n]) => n === signal)
  return entry?.[0].replace(/^SIG/, '')
}

/** The signal number for a name with or without `SIG`; undefined when unknown. */
export function signalNumber(name: string): number | undefined {
  const key = `SIG${name.replace(/^SIG/, '')}` as keyof typeof osConstants.signals
  return osConstants.signals[key]
}

interface ProcEntry {
  pid: number
  pgrp: number
  session: number
  state: string
}

function readProcEntries(): ProcEntry[] | undefined {
  let names: string[]
  try {
    names = readdirSync('/proc')
  } catch {
    return undefined
  }
  const entries: ProcEntry[] = []
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      // pid (comm) state ppid pgrp session ...; comm may hold spaces and parens.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      entries.push({
        pid: Number(name),
        state: fields[0] ?? '',
        pgrp: Number(fields[2]),
        session: Number(fields[3]),
      })
    } catch {
      // The process ended while we looked.
    }
  }
  return entries
}

/** The live (not zombie) processes in session `sid`; undefined without /proc. */
function sessionProcesses(sid: number): ProcEntry[] | undefined {
  const entries = readProcEntries()
  if (entries === undefined) return undefined
  return entries.filter((e) => e.session === sid && e.state !== 'Z' && e.pid !== process.pid)
}

function trySignal(pid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}

/** Sends `signal` to every process of session `sid`; true when any was there. */
export function signalSession(sid: number, signal: NodeJS.Signals): boolean {
  // The leader's process group at once, then the other groups job control
  // made inside the session, one process at a time.
  let any = trySignal(-sid, signal)
  for (const entry of sessionProcesses(sid) ?? []) {
    if (entry.pgrp === sid) continue
    any = trySignal(entry.pid, signal) || any
  }
  return any
}

/** True while any process of session `sid` lives. */
export function sessionAlive(sid: number): boolean {
  const entries = sessionProcesses(sid)
  if (entries === undefined) return trySignal(-sid, 0)
  return entries.length > 0
}

/**
 * Ends every process of session `sid`: SIGHUP (and SIGCONT, so stopped jobs
 * see it), then SIGKILL to whatever is left after `graceMs`.
 */
export async function terminateSession(sid: number, graceMs = KILL_GRACE_MS): Promise<void> {
  if (sid <= 1 || sid === process.pid) return
  if (!signalSession(sid, 'SIGHUP')) return
  signalSession(sid, 'SIGCONT')
  const deadline = Date.now() + graceMs
  while (Date.now() < deadline) {
    await sleep(100)
    if (!sessionAlive(sid)) return
  }
  signalSession(sid, 'SIGKILL')
}
