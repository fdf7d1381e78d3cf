/**
 * `coder-mesh ping NAME`: round trips to the workspace agent over the mesh
 * (wire format in netstack/ping.ts), each reported with the path of the
 * connection that carried it (field case B13: the path is read from that
 * connection, never guessed), then a summary.
 *
 * The run keeps one mesh session (one node, one ticket), and each ping goes
 * on the best connection open at that moment: when the dialer upgrades a relayed connection to a
 * direct one (WebRTC hole punching, netstack/dial.ts) during the run, the
 * next ping moves to it, so the change shows within one run.
 */
import type { Connection } from '@libp2p/interface'
import { setTimeout as sleep } from 'node:timers/promises'
import { PING_PROTOCOL } from '../netstack/constants.ts'
import { createPinger, type Pinger } from '../netstack/ping.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import { SECOND } from '../sdk/config.ts'
import { openWorkspaceMesh, viaPath, type MeshPaths, type WorkspaceMesh } from './mesh-client.ts'
import { write, writeJson } from './output.ts'

export const DEFAULT_PING_COUNT = 5
export const DEFAULT_PING_INTERVAL = 1 * SECOND

export interface PingRunOptions {
  workspace: string
  /** Pings to send; 0 means until `signal` aborts. */
  count: number
  /** Wait between pings, in ms. */
  interval: number
  /** Per ping, in ms; default DEFAULT_PING_TIMEOUT (netstack/ping.ts). */
  timeout?: number
  json: boolean
  /** Which paths to the agent to use; default `any`. */
  paths?: MeshPaths
  signal: AbortSignal
}

/** One round trip: `rtt` in ms, or null when no answer came (then `error` says why). */
export interface PingSample {
  seq: number
  rtt: number | null
  path: string
  error?: string
}

export interface PingReport {
  workspace: string
  /** The path of the last connection used. */
  path: string
  sent: number
  received: number
  /** Round-trip statistics in ms over the answered pings; null when none was. */
  min: number | null
  avg: number | null
  max: number | null
  pings: PingSample[]
}

/** Runs the pings, printing as it goes (or JSON at the end); resolves with the report. */
export async function runPing(api: ApiClient, options: PingRunOptions): Promise<PingReport> {
  const { workspace, signal } = options
  const mesh = await openWorkspaceMesh(api, workspace, { signal, paths: options.paths })
  const report: PingReport = {
    workspace,
    path: mesh.path(),
    sent: 0,
    received: 0,
    min: null,
    avg: null,
    max: null,
    pings: [],
  }
  let session: PingSession | undefined
  try {
    for (let seq = 1; options.count === 0 || seq <= options.count; seq++) {
      if (signal.aborted) break
      if (seq > 1 && !(await pause(options.interval, signal))) break

      const result = await pingOnce(mesh, session, seq, options)
      session = result.session
      // Ctrl-C during a ping ends the run; that ping does not count as lost.
      if (signal.aborted && result.sample.rtt === null) break
      report.sent++
      report.pings.push(result.sample)
      report.path = result.sample.path
      if (result.sample.rtt !== null) report.received++
      if (!options.json) await write(describeSample(workspace, result.sample))
    }
  } finally {
    session?.pinger.close()
    await mesh.close()
  }

  const rtts = report.pings.flatMap((p) => (p.rtt === null ? [] : [p.rtt]))
  if (rtts.length > 0) {
    report.min = Math.min(...rtts)
    report.max = Math.max(...rtts)
    report.avg = rtts.reduce((a, b) => a + b, 0) / rtts.length
  }
  if (options.json) await writeJson(report)
  else await write(describeSummary(report))
  return report
}

interface PingSession {
  pinger: Pinger
  /** The connection carrying this stream, and its path. */
  connection: Connection
  path: string
}

/**
 * One ping, on the current stream or a new one. A timed-out stream is kept
 * (its late echo is recognised and dropped); a failed one is replaced on
 * the next ping, which dials again if the connection died.
 */
async function pingOnce(
  mesh: WorkspaceMesh,
  session: PingSession | undefined,
  seq: number,
  options: PingRunOptions,
): Promise<{ sample: PingSample; session: PingSession | undefined }> {
  let current = session
  if (current !== undefined && mesh.connection !== current.connection) {
    // A better path came up (or this one closed): the next stream goes there.
    current.pinger.close()
    current = undefined
  }
  try {
    if (current === undefined) {
      const stream = await mesh.openStream(PING_PROTOCOL, { signal: options.signal })
      current = {
        pinger: createPinger(stream.duplex),
        connection: stream.connection,
        path: stream.path,
      }
    }
  } catch (err) {
    return { sample: { seq, rtt: null, path: mesh.path(), error: describe(err) }, session: current }
  }

  try {
    const rtt = await current.pinger.ping({ timeout: options.timeout, signal: options.signal })
    return { sample: { seq, rtt, path: current.path }, session: current }
  } catch (err) {
    const sample = { seq, rtt: null, path: current.path, error: describe(err) }
    if (current.pinger.isOpen()) return { sample, session: current }
    current.pinger.close()
    return { sample, session: undefined }
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Waits `ms`; false when `signal` aborted first. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal })
    return true
  } catch {
    return false
  }
}

/**
 * `pong from dev via direct (tcp) in 0.42 ms` (`pong from dev relayed via
 * <relay> in 3.10 ms`), or why there was none.
 */
export function describeSample(workspace: string, sample: PingSample): string {
  if (sample.rtt === null) {
    return `no pong from ${workspace} (seq ${sample.seq}): ${sample.error ?? 'no answer'}\n`
  }
  return `pong from ${workspace} ${viaPath(sample.path)} in ${formatMs(sample.rtt)} ms\n`
}

export function describeSummary(report: PingReport): string {
  const lost =
    report.sent === 0 ? 0 : Math.round((100 * (report.sent - report.received)) / report.sent)
  const lines = [
    `--- ${report.workspace} ping statistics ---`,
    `${report.sent} sent, ${report.received} received, ${lost}% lost, ${viaPath(report.path)}`,
  ]
  if (report.min !== null && report.avg !== null && report.max !== null) {
    lines.push(
      `rtt min/avg/max = ${formatMs(report.min)}/${formatMs(report.avg)}/${formatMs(report.max)} ms`,
    )
  }
  return lines.join('\n') + '\n'
}

function formatMs(ms: number): string {
  return ms < 100 ? ms.toFixed(2) : ms.toFixed(0)
}
