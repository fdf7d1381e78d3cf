/**
 * Build logs: each line is stored as it arrives and then handed to live
 * followers. A follower subscribes before it reads the stored lines and
 * drops live lines it already read (by seq), so it misses none and repeats
 * none; a line is published only after it is stored, and a build's final
 * event only after all its lines are.
 */
import type { StreamingApi } from 'hono/utils/stream'
import type { Build, BuildLogEvent } from '../sdk/api-types.ts'
import type { Logger } from '../sdk/logger.ts'
import type { ProvisionLogLine } from '../provisioner/index.ts'
import type { LogRecord } from './records.ts'
import { padKey, type Store } from './store.ts'

/** Longest stored log line, in characters; longer lines are cut. */
const MAX_LINE_CHARS = 16 * 1024

/** `null` tells a follower the coordinator is shutting down. */
export type LogListener = (event: BuildLogEvent | null) => void

export interface LogHub {
  subscribe(buildId: string, listener: LogListener): () => void
  publish(buildId: string, event: BuildLogEvent): void
  /** Ends every follower. */
  close(): void
}

export function createLogHub(): LogHub {
  const listeners = new Map<string, Set<LogListener>>()
  return {
    subscribe(buildId, listener) {
      let set = listeners.get(buildId)
      if (set === undefined) listeners.set(buildId, (set = new Set()))
      set.add(listener)
      return () => {
        set.delete(listener)
        if (set.size === 0) listeners.delete(buildId)
      }
    },
    publish(buildId, event) {
      for (const listener of listeners.get(buildId) ?? []) listener(event)
    },
    close() {
      for (const set of listeners.values()) for (const listener of set) listener(null)
      listeners.clear()
    },
  }
}

export function logKey(buildId: string, seq: number): string {
  return `${buildId}/${padKey(seq, 10)}`
}

export interface LogWriter {
  append(line: ProvisionLogLine): void
  /** Resolves once every appended line is stored and published. */
  flush(): Promise<void>
}

/**
 * Numbers, stores and publishes one build's lines, in order, numbering from
 * `after + 1` (after the lines an earlier writer stored).
 */
export function createLogWriter(
  store: Store,
  hub: LogHub,
  buildId: string,
  log: Logger,
  after = 0,
): LogWriter {
  let seq = after
  let chain = Promise.resolve()
  return {
    append(line) {
      const text = line.text.replace(/\r?\n$/, '')
      const record: LogRecord = {
        seq: ++seq,
        time: new Date().toISOString(),
        source: line.source,
        text: text.length > MAX_LINE_CHARS ? text.slice(0, MAX_LINE_CHARS) + '…' : text,
      }
      chain = chain
        .then(() => store.buildLogs.put(logKey(buildId, record.seq), record))
        .then(() => hub.publish(buildId, { type: 'log', ...record }))
        .catch((err: unknown) => log.error({ err, build_id: buildId }, 'store build log line'))
    },
    flush: () => chain,
  }
}

/** The seq of a build's last stored log line; 0 when it has none. */
export async function lastLogSeq(store: Store, buildId: string): Promise<number> {
  for await (const record of store.buildLogs.values({
    prefix: `${buildId}/`,
    reverse: true,
    limit: 1,
  })) {
    return record.seq
  }
  return 0
}

export interface StreamLogsOptions {
  store: Store
  hub: LogHub
  build: Build
  follow: boolean
}

function isFinished(build: Build): boolean {
  return build.status === 'succeeded' || build.status === 'failed'
}

/** Writes the build's log as NDJSON: stored lines, live lines if following, then the build. */
export async function streamBuildLogs(
  out: StreamingApi,
  options: StreamLogsOptions,
): Promise<void> {
  const { store, hub } = options
  const id = options.build.id
  const queue: (BuildLogEvent | null)[] = []
  let wake: (() => void) | undefined
  const unsubscribe = options.follow
    ? hub.subscribe(id, (event) => {
        queue.push(event)
        wake?.()
      })
    : () => undefined
  out.onAbort(() => {
    queue.push(null)
    wake?.()
  })

  const send = (event: BuildLogEvent): Promise<unknown> => out.write(JSON.stringify(event) + '\n')
  try {
    let last = 0
    for await (const record of store.buildLogs.values({ prefix: `${id}/` })) {
      await send({ type: 'log', ...record })
      last = record.seq
    }

    // Re-read after the stored lines: if the build ended meanwhile, its end
    // event may have been published before we subscribed.
    let build = options.build
    const stored = await store.builds.get(id)
    if (stored !== undefined) build = stripOwner(stored)

    while (options.follow && !isFinished(build) && !out.aborted) {
      const event = queue.shift()
      if (event === undefined) {
        await new Promise<void>((resolve) => (wake = resolve))
        wake = undefined
        continue
      }
      if (event === null) return
      if (event.type === 'build') build = event.build
      else if (event.seq > last) {
        await send(event)
        last = event.seq
      }
    }
    await send({ type: 'build', build })
  } finally {
    unsubscribe()
  }
}

/** The API shape of a stored build. */
export function stripOwner(record: Build & { ownerId?: string }): Build {
  const build = { ...record }
  delete build.ownerId
  return build
}
