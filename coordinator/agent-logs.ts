/**
 * Agent logs: the output of a workspace's startup script (and the agent's
 * own notes about it), sent by the agent in batches, stored, and streamed
 * to `coder-mesh logs`. Only the latest start build's lines are kept: the
 * first line of a new build replaces the old ones.
 *
 * Bounded: at most MAX_AGENT_LOG_LINES lines and MAX_AGENT_LOG_BYTES bytes
 * of text per start; past either, one line says so and the rest is dropped
 * (the agent keeps its own copy on disk under the same cap).
 */
import type { StreamingApi } from 'hono/utils/stream'
import type { AgentLogLine, AgentLogsRequest } from '../sdk/api-types.ts'
import type { KeyedLock } from './lock.ts'
import type { AgentLogRecord } from './records.ts'
import { padKey, type Store } from './store.ts'

/** Most lines kept per start build. */
export const MAX_AGENT_LOG_LINES = 10_000
/** Most bytes of text kept per start build. */
export const MAX_AGENT_LOG_BYTES = 1024 * 1024
/** The line stored in place of what went over the cap. */
export const TRUNCATED_TEXT = `agent log truncated: over ${MAX_AGENT_LOG_LINES} lines or ${
  MAX_AGENT_LOG_BYTES / 1024
} KiB for this start; the rest is dropped`

type Listener = (line: AgentLogLine | null) => void

interface Cursor {
  buildId: string
  seq: number
  bytes: number
  truncated: boolean
}

export interface AgentLogs {
  /** Stores the agent's lines for `workspaceId` (a new build replaces the old lines). */
  append(workspaceId: string, request: AgentLogsRequest): Promise<{ stored: number }>
  /**
   * Writes the stored lines as NDJSON (only `build`'s when given), then,
   * when following, new ones until the client goes.
   */
  stream(out: StreamingApi, workspaceId: string, follow: boolean, build?: string): Promise<void>
  /** Deletes the lines of a workspace (it is gone). */
  remove(workspaceId: string): Promise<void>
}

const logKey = (workspaceId: string, seq: number): string => `${workspaceId}/${padKey(seq, 10)}`

export function createAgentLogs(store: Store, locks: KeyedLock): AgentLogs {
  const cursors = new Map<string, Cursor>()
  const listeners = new Map<string, Set<Listener>>()

  async function cursorOf(workspaceId: string): Promise<Cursor | undefined> {
    const cached = cursors.get(workspaceId)
    if (cached !== undefined) return cached
    let last: AgentLogRecord | undefined
    let bytes = 0
    let lines = 0
    for await (const record of store.agentLogs.values({ prefix: `${workspaceId}/` })) {
      last = record
      bytes += Buffer.byteLength(record.text)
      lines++
    }
    if (last === undefined) return undefined
    const cursor = {
      buildId: last.buildId,
      seq: last.seq,
      bytes,
      truncated: lines >= MAX_AGENT_LOG_LINES || bytes >= MAX_AGENT_LOG_BYTES,
    }
    cursors.set(workspaceId, cursor)
    return cursor
  }

  async function remove(workspaceId: string): Promise<void> {
    const batch = store.batch()
    for await (const [key] of store.agentLogs.entries({ prefix: `${workspaceId}/` })) {
      batch.del(store.agentLogs, key)
    }
    await batch.write()
    cursors.delete(workspaceId)
  }

  function publish(workspaceId: string, line: AgentLogLine): void {
    for (const listener of listeners.get(workspaceId) ?? []) listener(line)
  }

  return {
    async append(workspaceId, request) {
      return locks.run(`agent-logs:${workspaceId}`, async () => {
        let cursor = await cursorOf(workspaceId)
        if (cursor === undefined || cursor.buildId !== request.buildId) {
          if (cursor !== undefined) await remove(workspaceId)
          cursor = { buildId: request.buildId, seq: 0, bytes: 0, truncated: false }
          cursors.set(workspaceId, cursor)
        }
        const stored: AgentLogRecord[] = []
        for (const line of request.lines) {
          if (cursor.truncated) break
          const bytes = Buffer.byteLength(line.text)
          const over =
            cursor.seq + 1 >= MAX_AGENT_LOG_LINES || cursor.bytes + bytes > MAX_AGENT_LOG_BYTES
          const seq = ++cursor.seq
          const record: AgentLogRecord = over
            ? { ...line, stream: 'agent', text: TRUNCATED_TEXT, seq, buildId: request.buildId }
            : { ...line, seq, buildId: request.buildId }
          cursor.bytes += over ? 0 : bytes
          cursor.truncated = over
          stored.push(record)
        }
        if (stored.length === 0) return { stored: 0 }
        const batch = store.batch()
        for (const record of stored)
          batch.put(store.agentLogs, logKey(workspaceId, record.seq), record)
        await batch.write()
        for (const record of stored) publish(workspaceId, toLine(record))
        return { stored: stored.length }
      })
    },

    async stream(out, workspaceId, follow, build) {
      const queue: (AgentLogLine | null)[] = []
      let wake: (() => void) | undefined
      const listener: Listener = (line) => {
        queue.push(line)
        wake?.()
      }
      let set = listeners.get(workspaceId)
      if (follow) {
        if (set === undefined) listeners.set(workspaceId, (set = new Set()))
        set.add(listener)
      }
      out.onAbort(() => listener(null))
      const send = (line: AgentLogLine): Promise<unknown> => out.write(JSON.stringify(line) + '\n')
      try {
        // Lines of one build only: a new build's first line clears the old ones.
        let last = 0
        let buildId: string | undefined
        for await (const record of store.agentLogs.values({ prefix: `${workspaceId}/` })) {
          if (build !== undefined && record.buildId !== build) continue
          await send(toLine(record))
          last = record.seq
          buildId = record.buildId
        }
        while (follow && !out.aborted) {
          const line = queue.shift()
          if (line === undefined) {
            await new Promise<void>((resolve) => (wake = resolve))
            wake = undefined
            continue
          }
          if (line === null) return
          // A new start numbers from 1 again: show its lines from the start.
          const fresh = buildId !== undefined && line.buildId !== buildId
          if (line.seq > last || fresh) {
            await send(line)
            last = line.seq
            buildId = line.buildId
          }
        }
      } finally {
        set?.delete(listener)
        if (set?.size === 0) listeners.delete(workspaceId)
      }
    },

    remove,
  }
}

function toLine(record: AgentLogRecord): AgentLogLine {
  return {
    type: 'log',
    seq: record.seq,
    time: record.time,
    stream: record.stream,
    text: record.text,
    buildId: record.buildId,
  }
}
