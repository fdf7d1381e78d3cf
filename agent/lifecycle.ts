/**
 * The agent's workspace services once it is on the mesh: the startup
 * script, the lifecycle state, and the reports (stats, listening ports)
 * that keep the coordinator informed.
 *
 * 1. `created`: the agent asks the coordinator for its startup script until
 *    its start build has ended (the script is a Terraform output, known only
 *    then).
 * 2. `starting` while the script runs, then `ready`, `start_error` or
 *    `start_timeout`. The script runs once per start build: a file in the
 *    agent's folder records which build's script ran and how it ended, so
 *    an agent restarted within the same build reports that instead of
 *    running it again.
 * 3. Every REPORT_INTERVAL_MS, and at once on each lifecycle change, a
 *    report with the lifecycle, the latest stats and the listening ports.
 * 4. On stop: `shutting_down`, the script (if still running) is ended, the
 *    log is flushed, then `off`.
 */
import { readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { MeshNode } from '../netstack/node.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import type { AgentLifecycle, AgentReportRequest, AgentStartupResponse } from '../sdk/api-types.ts'
import { SECOND } from '../sdk/config.ts'
import { isMeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { openAgentLog, type AgentLog } from './agent-log.ts'
import { createPortScanner } from './ports.ts'
import { sessionUser } from './processes.ts'
import { backoffDelay, describeRegisterError, isFatalRegisterError } from './register.ts'
import { runStartupScript } from './startup-script.ts'
import { createStatsCollector, type TrafficMeter } from './stats.ts'

/** How often stats and ports are reported, in ms. */
export const REPORT_INTERVAL_MS = 5 * SECOND
/** How often the agent asks for its startup script while its build runs, in ms. */
const STARTUP_POLL_MS = 1 * SECOND
/** How many times it asks that often (minutes' worth), then every STARTUP_SLOW_POLL_MS. */
const STARTUP_FAST_POLLS = 300
const STARTUP_SLOW_POLL_MS = 15 * SECOND
/** How long a request to the coordinator may take, in ms. */
const REQUEST_TIMEOUT_MS = 15 * SECOND
/** How long a report may take while the agent stops, in ms. */
const STOP_REPORT_TIMEOUT_MS = 2 * SECOND

/** The file recording which start build's script ran, and how it ended. */
export const STARTUP_STATE_FILE = 'startup-state.json'

interface StartupState {
  buildId: string
  lifecycle: AgentLifecycle
  startError?: string
}

export interface WorkspaceServicesInit {
  api: ApiClient
  /** The agent's folder. */
  dir: string
  node: MeshNode
  meter: TrafficMeter
  log: Logger
  /** How often to report, in ms; default REPORT_INTERVAL_MS. */
  reportIntervalMs?: number
}

export interface WorkspaceServices {
  lifecycle(): AgentLifecycle
  /** Reports shutting_down, ends the script, flushes the log, reports off. */
  stop(): Promise<void>
}

async function readStartupState(dir: string): Promise<StartupState | undefined> {
  try {
    const value = JSON.parse(await readFile(join(dir, STARTUP_STATE_FILE), 'utf8')) as unknown
    if (typeof value !== 'object' || value === null) return undefined
    const state = value as Partial<StartupState>
    if (typeof state.buildId !== 'string' || typeof state.lifecycle !== 'string') return undefined
    return state as StartupState
  } catch {
    return undefined
  }
}

async function writeStartupState(dir: string, state: StartupState): Promise<void> {
  const file = join(dir, STARTUP_STATE_FILE)
  await writeFile(`${file}.tmp`, JSON.stringify(state), { mode: 0o600 })
  await rename(`${file}.tmp`, file)
}

export function startWorkspaceServices(init: WorkspaceServicesInit): WorkspaceServices {
  const { api, dir, log } = init
  const controller = new AbortController()
  const signal = controller.signal
  const home = sessionUser().home
  const collectStats = createStatsCollector({ node: init.node, meter: init.meter, home })
  const scanPorts = createPortScanner()

  let lifecycle: AgentLifecycle = 'created'
  let startError: string | undefined
  /** The coordinator refused the token, or takes no reports: stop reporting. */
  let retired = false
  let agentLog: AgentLog | undefined

  /** Sends one report; with `full`, fresh stats and ports too. */
  const report = async (full: boolean, timeoutMs?: number): Promise<void> => {
    if (retired) return
    const stats = full ? await collectStats() : undefined
    const ports = full ? await scanPorts().catch(() => undefined) : undefined
    // The state as it is once measuring is done, not as it was before.
    const body: AgentReportRequest = { lifecycle }
    if (startError !== undefined) body.startError = startError.slice(0, 1000)
    if (stats !== undefined) body.stats = stats
    if (ports !== undefined) body.ports = ports
    // A coordinator that stops answering must not hold up the reports after it.
    const timeout = AbortSignal.timeout(timeoutMs ?? REQUEST_TIMEOUT_MS)
    const options = {
      signal: timeoutMs === undefined ? AbortSignal.any([signal, timeout]) : timeout,
    }
    try {
      await api.reportAgent(body, options)
    } catch (err) {
      if (isFatalRegisterError(err)) retired = true
      else if (!signal.aborted) log.debug({ err: describeRegisterError(err) }, 'report failed')
    }
  }

  // Reports go one at a time, in order, so a slow one cannot land after a
  // newer lifecycle state and undo it.
  let reporting = Promise.resolve()
  const queueReport = (full: boolean): Promise<void> =>
    (reporting = reporting.then(() => report(full)))
  const setLifecycle = (next: AgentLifecycle, error?: string): void => {
    lifecycle = next
    startError = error
    log.info({ lifecycle: next, start_error: error }, 'agent lifecycle')
    void queueReport(false)
  }

  const reportLoop = async (): Promise<void> => {
    const interval = init.reportIntervalMs ?? REPORT_INTERVAL_MS
    // The first soon, so `show` has stats shortly after the agent starts.
    let wait = Math.min(interval, SECOND)
    while (!signal.aborted && !retired) {
      try {
        await sleep(wait, undefined, { signal })
      } catch {
        return
      }
      wait = interval
      await queueReport(true)
    }
  }

  /** Asks for the startup script until the start build has ended. */
  const fetchStartup = async (): Promise<AgentStartupResponse | undefined> => {
    for (let failures = 0, polls = 0; !signal.aborted; polls++) {
      try {
        const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
        const startup = await api.agentStartup({ signal: AbortSignal.any([signal, timeout]) })
        if (startup.ready && startup.buildId !== undefined) return startup
        failures = 0
        // A start build that failed after starting the agent never becomes
        // ready: after a few minutes, ask less often.
        const wait = polls < STARTUP_FAST_POLLS ? STARTUP_POLL_MS : STARTUP_SLOW_POLL_MS
        await sleep(wait, undefined, { signal })
      } catch (err) {
        if (signal.aborted) return undefined
        if (isFatalRegisterError(err)) {
          retired = true
          return undefined
        }
        if (isMeshError(err) && err.code === 'MESH_NOT_FOUND') {
          // A coordinator from before startup scripts: it takes no reports either.
          log.info('the coordinator runs no startup scripts and takes no reports (older version)')
          retired = true
          return undefined
        }
        log.warn({ err: describeRegisterError(err) }, 'cannot get the startup script; retrying')
        await sleep(Math.min(backoffDelay(failures++), 5 * SECOND), undefined, { signal }).catch(
          () => undefined,
        )
      }
    }
    return undefined
  }

  const start = async (): Promise<void> => {
    const startup = await fetchStartup()
    if (startup?.buildId === undefined) return
    const buildId = startup.buildId

    const done = await readStartupState(dir)
    if (done?.buildId === buildId) {
      // Restarted within the same start: the script ran (or began) already.
      const interrupted = done.lifecycle === 'starting'
      log.info({ build_id: buildId }, 'startup script already ran for this build')
      setLifecycle(
        interrupted ? 'start_error' : done.lifecycle,
        interrupted ? 'the agent restarted while the startup script ran' : done.startError,
      )
      return
    }

    const script = startup.script ?? ''
    agentLog = openAgentLog({ api, dir, buildId, log })
    for (const problem of startup.problems ?? []) agentLog.write('agent', problem)
    if (script.trim() === '') {
      agentLog.write('agent', 'no startup script')
      await writeStartupState(dir, { buildId, lifecycle: 'ready' })
      setLifecycle('ready')
      await agentLog.flush()
      return
    }

    await writeStartupState(dir, { buildId, lifecycle: 'starting' })
    setLifecycle('starting')
    const timeout = startup.timeoutSeconds
    agentLog.write(
      'agent',
      `running the startup script${timeout === undefined ? '' : ` (timeout ${timeout} s)`}`,
    )
    const sink = agentLog
    const result = await runStartupScript({
      script,
      dir,
      timeoutSeconds: timeout,
      signal,
      onLine: (stream, text) => sink.write(stream, text),
    })
    if (signal.aborted) return
    const next: AgentLifecycle =
      result.outcome === 'ok'
        ? 'ready'
        : result.outcome === 'timeout'
          ? 'start_timeout'
          : 'start_error'
    agentLog.write('agent', result.error ?? 'the startup script finished')
    await writeStartupState(dir, { buildId, lifecycle: next, startError: result.error })
    setLifecycle(next, result.error)
    await agentLog.flush()
  }

  setLifecycle('created')
  const started = start().catch((err: unknown) => {
    log.error({ err }, 'startup failed')
    setLifecycle('start_error', `the agent could not run the startup script: ${String(err)}`)
  })
  const loop = reportLoop()

  let stopping: Promise<void> | undefined
  return {
    lifecycle: () => lifecycle,
    stop() {
      stopping ??= (async () => {
        lifecycle = 'shutting_down'
        // Ends the script, the startup requests and the reports under way.
        controller.abort()
        await loop
        await reporting
        await report(false, STOP_REPORT_TIMEOUT_MS)
        await started
        await agentLog?.close()
        lifecycle = 'off'
        await report(false, STOP_REPORT_TIMEOUT_MS)
      })()
      return stopping
    },
  }
}
