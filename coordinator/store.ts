/**
 * The embedded store: one LevelDB under `<dataDir>/store`, JSON values, a
 * sublevel per kind of record. Callers get typed collections; a write that
 * spans several of them goes through `batch()` so it lands atomically.
 *
 * Durability rule: a write whose success is acknowledged to a client is
 * written with `{ sync: true }` (fsync before the promise resolves), so a
 * crash right after the answer cannot lose it.
 *
 * The `meta` record holds the layout's schema version. Opening an older
 * store runs the migrations in MIGRATIONS one version at a time, each
 * recorded as it completes; a newer store is refused.
 */
import type { AbstractSublevel } from 'abstract-level'
import { Level } from 'level'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { MeshError } from '../sdk/errors.ts'
import { SCHEMA_VERSION } from './constants.ts'
import type {
  AgentLogRecord,
  AgentReportRecord,
  ApiTokenRecord,
  AuditRecord,
  BuildRecord,
  KeysRecord,
  LogRecord,
  MetaRecord,
  RevocationRecord,
  SessionRecord,
  TemplateFilesRecord,
  TemplateRecord,
  TemplateVersionRecord,
  TicketRecord,
  UserRecord,
  WorkspaceRecord,
} from './records.ts'

type Root = Level<string, unknown>
type Sub<V> = AbstractSublevel<Root, string | Buffer | Uint8Array, string, V>

export interface WriteOptions {
  /** fsync before the promise resolves: use it where an acknowledged write must survive a crash. */
  sync?: boolean
}

export interface RangeOptions {
  /** Only keys starting with this string. */
  prefix?: string
  /** Only keys at or after this one (with `prefix`, within it). */
  gte?: string
  reverse?: boolean
  limit?: number
}

/** One kind of record: string keys, JSON values. A missing key reads as undefined. */
export class Collection<V> {
  readonly sub: Sub<V>

  constructor(sub: Sub<V>) {
    this.sub = sub
  }

  get(key: string): Promise<V | undefined> {
    return this.sub.get(key)
  }

  put(key: string, value: V, options: WriteOptions = {}): Promise<void> {
    // classic-level reads `sync` from options that sublevels pass through
    // untouched; abstract-level's types just do not list it.
    const levelOptions = { sync: options.sync === true, valueEncoding: 'json' }
    return this.sub.put(key, value, levelOptions)
  }

  del(key: string, options: WriteOptions = {}): Promise<void> {
    const levelOptions = { sync: options.sync === true, keyEncoding: 'utf8' }
    return this.sub.del(key, levelOptions)
  }

  async *entries(options: RangeOptions = {}): AsyncGenerator<[string, V]> {
    const range: { gte?: string; lt?: string } =
      options.prefix === undefined ? {} : { gte: options.prefix, lt: options.prefix + '\uffff' }
    if (options.gte !== undefined && (range.gte === undefined || options.gte > range.gte)) {
      range.gte = options.gte
    }
    const iterator = this.sub.iterator({
      ...range,
      reverse: options.reverse === true,
      limit: options.limit ?? -1,
    })
    try {
      for await (const entry of iterator) yield entry
    } finally {
      await iterator.close()
    }
  }

  async *values(options: RangeOptions = {}): AsyncGenerator<V> {
    for await (const [, value] of this.entries(options)) yield value
  }
}

/** Where a page starts and how long it is: a listing's `?offset=&limit=`. */
export interface PageRange {
  offset: number
  limit: number
}

/** One page of a listing, and whether anything follows it. */
export interface Page<T> {
  items: T[]
  more: boolean
}

/**
 * One page of an ordered iteration: skips `offset` items, keeps `limit`, and
 * reads one more only to tell whether the page is the last. Nothing past that
 * is read, so a listing costs its page, not everything stored.
 */
export async function takePage<T>(source: AsyncIterable<T>, range: PageRange): Promise<Page<T>> {
  const items: T[] = []
  let seen = 0
  for await (const item of source) {
    if (seen >= range.offset + range.limit) return { items, more: true }
    if (seen >= range.offset) items.push(item)
    seen++
  }
  return { items, more: false }
}

/** Writes to several collections, applied together or not at all. */
export interface Batch {
  put<V>(collection: Collection<V>, key: string, value: V): Batch
  del<V>(collection: Collection<V>, key: string): Batch
  write(options?: WriteOptions): Promise<void>
}

export interface Store {
  readonly location: string
  readonly meta: Collection<MetaRecord>
  readonly keys: Collection<KeysRecord>
  readonly users: Collection<UserRecord>
  /** username → user id */
  readonly usernames: Collection<string>
  /** lowercased email → user id */
  readonly emails: Collection<string>
  readonly sessions: Collection<SessionRecord>
  /** sha256(API token) → token */
  readonly apiTokens: Collection<ApiTokenRecord>
  /** `<user id>/<token name>` → sha256(API token) */
  readonly apiTokenNames: Collection<string>
  /** `<ms, 15 digits>.<seq, 12 digits>` → entry; append-only */
  readonly audit: Collection<AuditRecord>
  /** `<user id>/<ticket id>` → an issued, possibly unexpired ticket */
  readonly tickets: Collection<TicketRecord>
  /** `<workspace id>/<client peer id>` → revocation */
  readonly revocations: Collection<RevocationRecord>
  readonly templates: Collection<TemplateRecord>
  /** `<template>/<version, 8 digits>` → version */
  readonly templateVersions: Collection<TemplateVersionRecord>
  /** `<template>/<version, 8 digits>` → files */
  readonly templateFiles: Collection<TemplateFilesRecord>
  readonly workspaces: Collection<WorkspaceRecord>
  /** `<owner id>/<name>` → workspace id */
  readonly workspaceNames: Collection<string>
  /** sha256(agent token) → workspace id */
  readonly agentTokens: Collection<string>
  readonly builds: Collection<BuildRecord>
  /** `<build id>/<seq, 10 digits>` → line */
  readonly buildLogs: Collection<LogRecord>
  /** workspace id → terraform.tfstate, base64 */
  readonly states: Collection<string>
  /** workspace id → what its agent last reported (lifecycle, stats, ports) */
  readonly agentReports: Collection<AgentReportRecord>
  /** `<workspace id>/<seq, 10 digits>` → a line of the agent's log (startup script output) */
  readonly agentLogs: Collection<AgentLogRecord>
  batch(): Batch
  /** True while the database is open. */
  isOpen(): boolean
  close(): Promise<void>
}

/** Zero-padded decimal, so numeric keys sort in order. */
export function padKey(n: number, width: number): string {
  return String(n).padStart(width, '0')
}

/** Opens (creating if needed) the store under `<dataDir>/store`. */
export async function openStore(dataDir: string): Promise<Store> {
  const location = join(dataDir, 'store')
  await mkdir(location, { recursive: true, mode: 0o700 })
  const db: Root = new Level<string, unknown>(location, { valueEncoding: 'json' })
  try {
    await db.open()
  } catch (err) {
    if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `The data folder ${dataDir} is in use by another coder-mesh server.`,
        { detail: (err as Error & { cause: Error }).cause.message, cause: err },
      )
    }
    throw err
  }

  const collection = <V>(name: string): Collection<V> =>
    new Collection(db.sublevel<string, V>(name, { valueEncoding: 'json' }))

  const store: Store = {
    location,
    meta: collection('meta'),
    keys: collection('keys'),
    users: collection('users'),
    usernames: collection('usernames'),
    emails: collection('emails'),
    sessions: collection('sessions'),
    apiTokens: collection('api-tokens'),
    apiTokenNames: collection('api-token-names'),
    audit: collection('audit'),
    tickets: collection('tickets'),
    revocations: collection('revocations'),
    templates: collection('templates'),
    templateVersions: collection('template-versions'),
    templateFiles: collection('template-files'),
    workspaces: collection('workspaces'),
    workspaceNames: collection('workspace-names'),
    agentTokens: collection('agent-tokens'),
    builds: collection('builds'),
    buildLogs: collection('build-logs'),
    states: collection('states'),
    // Added without a schema version: a store without them reads them as empty.
    agentReports: collection('agent-reports'),
    agentLogs: collection('agent-logs'),
    batch: () => newBatch(db),
    isOpen: () => db.status === 'open',
    close: () => db.close(),
  }

  try {
    await checkMeta(store)
  } catch (err) {
    await db.close()
    throw err
  }
  return store
}

function newBatch(db: Root): Batch {
  const chained = db.batch()
  const batch: Batch = {
    put(collection, key, value) {
      chained.put(key, value, { sublevel: collection.sub })
      return batch
    },
    del(collection, key) {
      chained.del(key, { sublevel: collection.sub })
      return batch
    },
    write: (options = {}) => chained.write({ sync: options.sync === true }),
  }
  return batch
}

/**
 * Migrations, by the version they bring the store to. Each must be safe to
 * run again: a crash before its version is recorded runs it once more.
 */
export const MIGRATIONS: Record<number, (store: Store) => Promise<void>> = {
  /** 1 → 2: users gain a status (suspension). */
  2: async (store) => {
    const batch = store.batch()
    for await (const [id, user] of store.users.entries()) {
      if ((user as Partial<UserRecord>).status === undefined) {
        batch.put(store.users, id, { ...user, status: 'active' as const })
      }
    }
    await batch.write({ sync: true })
  },
}

async function checkMeta(store: Store): Promise<void> {
  const meta = await store.meta.get('meta')
  if (meta === undefined) {
    const record = { schemaVersion: SCHEMA_VERSION, createdAt: new Date().toISOString() }
    await store.meta.put('meta', record, { sync: true })
    return
  }
  if (meta.schemaVersion > SCHEMA_VERSION) {
    throw new Error(
      `open store: schema version ${meta.schemaVersion} is newer than ${SCHEMA_VERSION}; ` +
        'this coder-mesh cannot read it',
    )
  }
  for (let version = meta.schemaVersion + 1; version <= SCHEMA_VERSION; version++) {
    const migrate = MIGRATIONS[version]
    if (migrate === undefined) throw new Error(`open store: no migration to version ${version}`)
    await migrate(store)
    await store.meta.put('meta', { ...meta, schemaVersion: version }, { sync: true })
  }
}
