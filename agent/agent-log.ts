/**
 * The agent log of one start: the startup script's output and the agent's
 * notes about it. Each line goes to a file in the agent's folder
 * (`startup-script.log`, replaced at each start) and, in batches, to the
 * coordinator, which `coder-mesh logs` reads.
 *
 * Bounded within the coordinator's caps (MAX_LOG_LINES lines, MAX_LOG_BYTES
 * bytes): past OUTPUT_LINES lines or OUTPUT_BYTES bytes of the script's
 * output, one line says so and the rest is dropped; the rest of the caps is
 * kept for the agent's notes, so how the script ended is always there.
 * Lines the coordinator cannot take during an outage are kept and sent
 * later, so an outage loses nothing that fits; lines it refuses are dropped.
 */
import { createWriteStream } from 'node:fs'
import { join } from 'node:path'
import type { ApiClient } from '../sdk/api-client.ts'
import type { AgentLogInput } from '../sdk/api-types.ts'
import { isMeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'

export const STARTUP_LOG_FILE = 'startup-script.log'
/** Most lines kept per start (the coordinator keeps as many). */
export const MAX_LOG_LINES = 10_000
/** Most bytes of text kept per start. */
export const MAX_LOG_BYTES = 1024 * 1024
/** Lines kept for the agent's own notes, within MAX_LOG_LINES. */
const NOTE_LINES = 10
/** Most lines and bytes of the script's output: the rest of the caps is for notes. */
const OUTPUT_LINES = MAX_LOG_LINES - NOTE_LINES
const OUTPUT_BYTES = MAX_LOG_BYTES - 192 * 1024
/** Longest line, in characters; longer ones are split. */
export const MAX_LINE_CHARS = 4096
/** How often lines are sent, in ms. */
const FLUSH_INTERVAL_MS = 500
/** How long a request may take, in ms. */
const REQUEST_TIMEOUT_MS = 15_000
/** How long closing waits for pending lines to be sent, in ms. */
const CLOSE_WAIT_MS = 2000
/** Most lines per request. */
const BATCH_LINES = 500
/**
 * Most bytes of JSON per request: well under the coordinator's 1 MiB body
 * limit, even for lines of control characters (6 bytes each as JSON).
 */
const BATCH_BYTES = 256 * 1024

/** The lines at the head of `pending` that make one request (at least one). */
function nextBatch(pending: AgentLogInput[]): AgentLogInput[] {
  let bytes = 0
  let count = 0
  for (const line of pending) {
    bytes += Buffer.byteLength(JSON.stringify(line))
    if (count > 0 && (bytes > BATCH_BYTES || count >= BATCH_LINES)) break
    count++
  }
  return pending.slice(0, count)
}

export type LogStream = AgentLogInput['stream']

export interface AgentLogInit {
  api: ApiClient
  dir: string
  buildId: string
  log: Logger
}

export interface AgentLog {
  write(stream: LogStream, text: string): void
  /** Sends what is pending; resolves when sent or given up on. */
  flush(): Promise<void>
  /** Flushes and stops sending (lines written later are dropped). */
  close(): Promise<void>
}

export function openAgentLog(init: AgentLogInit): AgentLog {
  const file = createWriteStream(join(init.dir, STARTUP_LOG_FILE), { flags: 'w', mode: 0o600 })
  // A full disk must not stop the script or the agent: the coordinator's copy remains.
  file.on('error', (err) => init.log.warn({ err: err.message }, 'cannot write the agent log file'))
  let lines = 0
  let bytes = 0
  let truncated = false
  let notes = 0
  let closed = false
  let pending: AgentLogInput[] = []
  let sending: Promise<void> | undefined
  let warned = false

  const send = async (): Promise<void> => {
    while (pending.length > 0 && !closed) {
      const batch = nextBatch(pending)
      try {
        const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
        await init.api.appendAgentLogs({ buildId: init.buildId, lines: batch }, { signal })
        pending = pending.slice(batch.length)
        warned = false
      } catch (err) {
        if (isMeshError(err) && err.status >= 400 && err.status < 500 && err.status !== 429) {
          // Refused as it is (not an outage): sending it again cannot help.
          init.log.warn({ err: err.message, lines: batch.length }, 'agent log lines refused')
          pending = pending.slice(batch.length)
          continue
        }
        if (!warned) {
          const why = isMeshError(err) ? err.message : (err as Error).message
          init.log.warn({ err: why }, 'cannot send the agent log; will retry')
          warned = true
        }
        return
      }
    }
  }
  const flush = (): Promise<void> => {
    sending ??= send().finally(() => (sending = undefined))
    return sending
  }
  const timer = setInterval(() => void flush(), FLUSH_INTERVAL_MS)
  timer.unref()

  const add = (stream: LogStream, text: string): void => {
    const line = { time: new Date().toISOString(), stream, text }
    pending.push(line)
    const prefix = stream === 'agent' ? '[agent] ' : stream === 'stderr' ? '[stderr] ' : ''
    if (file.writable) file.write(`${line.time} ${prefix}${text}\n`)
  }

  return {
    write(stream, text) {
      if (closed) return
      if (stream === 'agent') {
        // The agent's own notes (how the script ended) fit in the room kept for them.
        if (notes < NOTE_LINES) add('agent', text.slice(0, MAX_LINE_CHARS))
        notes++
        return
      }
      if (truncated) return
      for (let i = 0; i === 0 || i < text.length; i += MAX_LINE_CHARS) {
        const part = text.slice(i, i + MAX_LINE_CHARS)
        const size = Buffer.byteLength(part)
        if (lines + 1 > OUTPUT_LINES || bytes + size > OUTPUT_BYTES) {
          truncated = true
          notes++
          add(
            'agent',
            `log truncated: over ${OUTPUT_LINES} lines or ${OUTPUT_BYTES / 1024} KiB of output; the rest is dropped`,
          )
          return
        }
        lines++
        bytes += size
        add(stream, part)
      }
    },
    flush,
    async close() {
      clearInterval(timer)
      // The coordinator may be gone while the agent stops: wait for it briefly.
      let timeout: NodeJS.Timeout | undefined
      await Promise.race([flush(), new Promise((r) => (timeout = setTimeout(r, CLOSE_WAIT_MS)))])
      clearTimeout(timeout)
      await new Promise<void>((resolve) => file.end(resolve))
      closed = true
    },
  }
}
