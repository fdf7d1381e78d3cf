/**
 * The audit log: one entry per change made through the API (who, what,
 * target, when, from which address, and whether it worked), appended and
 * never edited. There is no update or delete here by design.
 *
 * Keys are `<ms, 15 digits>.<seq, 12 digits>`: the time never goes backwards
 * (a clock step back reuses the last time) and seq grows by one per entry
 * across restarts, so keys sort in the order entries were appended and a
 * `since` query is a key range.
 */
import type { AuditEntry, AuditQuery } from '../sdk/api-types.ts'
import type { Logger } from '../sdk/logger.ts'
import type { AuditRecord } from './records.ts'
import { padKey, type Store } from './store.ts'

export interface AuditComponents {
  store: Store
  log: Logger
  now?: () => number
}

export type AuditInput = Omit<AuditRecord, 'time'>

export interface Audit {
  /**
   * Appends an entry. Successful changes are synced before the change is
   * acknowledged; failures are written without waiting for the disk.
   */
  append(entry: AuditInput): Promise<void>
  /** Entries matching `query`, newest first, one page; `more` when others follow. */
  list(query: AuditQuery): Promise<{ items: AuditEntry[]; more: boolean }>
}

const TIME_DIGITS = 15
const SEQ_DIGITS = 12

function parseKey(key: string): { ms: number; seq: number } {
  const [ms, seq] = key.split('.')
  return { ms: Number(ms), seq: Number(seq) }
}

export async function openAudit(components: AuditComponents): Promise<Audit> {
  const { store } = components
  const log = components.log.child({ component: 'audit' })
  const now = components.now ?? Date.now

  let lastMs = 0
  let lastSeq = 0
  for await (const [key] of store.audit.entries({ reverse: true, limit: 1 })) {
    ;({ ms: lastMs, seq: lastSeq } = parseKey(key))
  }

  return {
    async append(entry) {
      // Taken synchronously, so concurrent appends keep their call order.
      lastMs = Math.max(lastMs, now())
      lastSeq++
      const key = `${padKey(lastMs, TIME_DIGITS)}.${padKey(lastSeq, SEQ_DIGITS)}`
      const record: AuditRecord = { ...entry, time: new Date(lastMs).toISOString() }
      try {
        await store.audit.put(key, record, { sync: entry.result === 'success' })
      } catch (err) {
        log.error({ err, action: entry.action }, 'append audit entry')
        throw err
      }
    },

    async list(query) {
      const since = query.since === undefined ? undefined : Date.parse(query.since)
      const gte = since === undefined ? undefined : padKey(Math.max(0, since), TIME_DIGITS)
      const items: AuditEntry[] = []
      let skipped = 0
      for await (const [id, record] of store.audit.entries({ reverse: true, gte })) {
        if (query.user !== undefined && record.actor !== query.user) continue
        if (query.action !== undefined && !matchesAction(record.action, query.action)) continue
        if (skipped < query.offset) {
          skipped++
          continue
        }
        if (items.length === query.limit) return { items, more: true }
        items.push({ id, ...record })
      }
      return { items, more: false }
    },
  }
}

function matchesAction(action: string, wanted: string): boolean {
  return wanted.endsWith('.') ? action.startsWith(wanted) : action === wanted
}
