/**
 * Runs the template's startup script once: as the workspace's user, with
 * their login shell, in their home folder, with the environment SSH
 * sessions get (the agent token left out). A script starting with `#!` is
 * run as the program it names.
 *
 * The script is done when its process exits; output that background
 * processes it started write later is still read and logged (up to the
 * log's cap), so a server started with `&` keeps its output pipe instead of
 * dying of SIGPIPE. The script runs in a session of its own, so a timeout
 * or the agent stopping ends it and everything it started.
 *
 * Shortcoming: that pipe is the agent's. When the agent restarts within
 * the same start (the script is not run again), a background process that
 * still writes to it gets EPIPE or SIGPIPE. Redirect the output of long-lived
 * processes to a file; a fix would hand the output to a file the agent tails.
 */
import { spawn } from 'node:child_process'
import { chmod, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { sessionEnvironment, sessionUser, terminateSession } from './processes.ts'

export const STARTUP_SCRIPT_FILE = 'startup-script'

export interface StartupScriptInit {
  script: string
  /** The agent's folder: the script is written there to be run. */
  dir: string
  /** Seconds; undefined for none. */
  timeoutSeconds?: number
  onLine: (stream: 'stdout' | 'stderr', text: string) => void
  /** Stops the script (the agent is stopping). */
  signal?: AbortSignal
}

export interface StartupScriptResult {
  outcome: 'ok' | 'error' | 'timeout'
  /** One line: why it failed. */
  error?: string
}

/** Calls `onLine` for each line `stream` gives, the last one even without a newline. */
function readLines(stream: Readable, onLine: (text: string) => void): void {
  let partial = ''
  stream.setEncoding('utf8')
  stream.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop() ?? ''
    for (const part of parts) onLine(part.replace(/\r$/, ''))
  })
  stream.on('end', () => {
    if (partial !== '') onLine(partial.replace(/\r$/, ''))
    partial = ''
  })
  stream.on('error', () => undefined)
}

export async function runStartupScript(init: StartupScriptInit): Promise<StartupScriptResult> {
  const user = sessionUser()
  const file = join(init.dir, STARTUP_SCRIPT_FILE)
  await writeFile(file, init.script, { mode: 0o700 })
  await chmod(file, 0o700)
  const [command, args] = init.script.startsWith('#!') ? [file, []] : [user.shell, [file]]
  const env = sessionEnvironment({ user, clientEnv: {} })

  return new Promise<StartupScriptResult>((resolve) => {
    let timedOut = false
    let stopped = false
    let timer: NodeJS.Timeout | undefined
    const child = spawn(command, args, {
      cwd: user.home,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    })
    const end = (result: StartupScriptResult): void => {
      clearTimeout(timer)
      init.signal?.removeEventListener('abort', onAbort)
      resolve(result)
    }
    const stop = (): void => {
      if (child.pid !== undefined) void terminateSession(child.pid)
    }
    const onAbort = (): void => {
      stopped = true
      stop()
    }

    readLines(child.stdout, (text) => init.onLine('stdout', text))
    readLines(child.stderr, (text) => init.onLine('stderr', text))
    child.once('error', (err) =>
      end({ outcome: 'error', error: `cannot run the startup script: ${err.message}` }),
    )
    child.once('exit', (code, signal) => {
      if (timedOut) {
        end({ outcome: 'timeout', error: `timed out after ${init.timeoutSeconds} s` })
      } else if (code === 0) {
        end({ outcome: 'ok' })
      } else if (stopped) {
        end({ outcome: 'error', error: 'stopped: the agent is shutting down' })
      } else if (code !== null) {
        end({ outcome: 'error', error: `the startup script exited with status ${code}` })
      } else {
        end({ outcome: 'error', error: `the startup script was killed by ${signal ?? 'a signal'}` })
      }
    })

    if (init.timeoutSeconds !== undefined) {
      timer = setTimeout(() => {
        timedOut = true
        stop()
      }, init.timeoutSeconds * 1000)
    }
    if (init.signal?.aborted === true) onAbort()
    else init.signal?.addEventListener('abort', onAbort, { once: true })
  })
}
