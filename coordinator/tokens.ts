/**
 * API tokens: long-lived bearer tokens a user creates for scripts, each
 * with a name (unique per user), an expiry and a last-used time. Only
 * sha256(token) is stored; the token is returned once, at creation.
 */
import type { ApiToken, CreateApiTokenResponse } from '../sdk/api-types.ts'
import { DEFAULT_TOKEN_LIFETIME_SECONDS } from '../sdk/api-types.ts'
import { SECOND } from '../sdk/config.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { assertName } from '../sdk/names.ts'
import { TOKEN_TOUCH_INTERVAL } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { ApiTokenRecord } from './records.ts'
import { API_TOKEN_PREFIX, hashToken, newApiToken } from './secrets.ts'
import type { Batch, Store } from './store.ts'

export interface ApiTokensComponents {
  store: Store
  locks: KeyedLock
  log: Logger
  now?: () => number
}

export interface ApiTokens {
  create(userId: string, name: string, lifetimeSeconds?: number): Promise<CreateApiTokenResponse>
  /** The user's tokens by name, expired ones included. */
  list(userId: string): AsyncGenerator<ApiToken>
  /** MESH_TOKEN_NOT_FOUND if the user has no token of that name. */
  delete(userId: string, name: string): Promise<void>
  /** The token's owner id, or undefined when the token is unknown or expired. */
  verify(token: string): Promise<string | undefined>
  /** Adds the deletion of all of a user's tokens to `batch`. */
  deleteAllOf(userId: string, batch: Batch): Promise<void>
}

export function toApiToken(record: ApiTokenRecord): ApiToken {
  const token: ApiToken = {
    name: record.name,
    createdAt: record.createdAt,
    expiresAt: new Date(record.expiresAt).toISOString(),
  }
  if (record.lastUsedAt !== undefined) token.lastUsedAt = new Date(record.lastUsedAt).toISOString()
  return token
}

export function createApiTokens(components: ApiTokensComponents): ApiTokens {
  const { store, locks } = components
  const log = components.log.child({ component: 'tokens' })
  const now = components.now ?? Date.now
  const nameKey = (userId: string, name: string): string => `${userId}/${name}`

  return {
    create(userId, name, lifetimeSeconds = DEFAULT_TOKEN_LIFETIME_SECONDS) {
      assertName('token', name)
      const key = nameKey(userId, name)
      return locks.run(`token:${key}`, async () => {
        if ((await store.apiTokenNames.get(key)) !== undefined) {
          throw new MeshError(
            'MESH_TOKEN_EXISTS',
            `You already have a token named ${JSON.stringify(name)}.`,
          )
        }
        const token = newApiToken()
        const hash = hashToken(token)
        const record: ApiTokenRecord = {
          userId,
          name,
          createdAt: new Date(now()).toISOString(),
          expiresAt: now() + lifetimeSeconds * SECOND,
        }
        await store
          .batch()
          .put(store.apiTokens, hash, record)
          .put(store.apiTokenNames, key, hash)
          .write({ sync: true })
        log.info({ user_id: userId, name }, 'api token created')
        return { ...toApiToken(record), token }
      })
    },

    async *list(userId) {
      for await (const hash of store.apiTokenNames.values({ prefix: `${userId}/` })) {
        const record = await store.apiTokens.get(hash)
        if (record !== undefined) yield toApiToken(record)
      }
    },

    delete(userId, name) {
      const key = nameKey(userId, name)
      return locks.run(`token:${key}`, async () => {
        const hash = await store.apiTokenNames.get(key)
        if (hash === undefined) {
          throw new MeshError('MESH_TOKEN_NOT_FOUND', `No token named ${JSON.stringify(name)}.`)
        }
        await store
          .batch()
          .del(store.apiTokens, hash)
          .del(store.apiTokenNames, key)
          .write({ sync: true })
        log.info({ user_id: userId, name }, 'api token deleted')
      })
    },

    async verify(token) {
      if (!token.startsWith(API_TOKEN_PREFIX)) return undefined
      const hash = hashToken(token)
      const record = await store.apiTokens.get(hash)
      if (record === undefined || record.expiresAt <= now()) return undefined

      // Last use to the minute: a write per request would cost more than it tells.
      if (record.lastUsedAt === undefined || now() - record.lastUsedAt >= TOKEN_TOUCH_INTERVAL) {
        const touched = { ...record, lastUsedAt: now() }
        await locks.run(`token:${nameKey(record.userId, record.name)}`, async () => {
          if ((await store.apiTokens.get(hash)) !== undefined)
            await store.apiTokens.put(hash, touched)
        })
      }
      return record.userId
    },

    async deleteAllOf(userId, batch) {
      for await (const [key, hash] of store.apiTokenNames.entries({ prefix: `${userId}/` })) {
        batch.del(store.apiTokens, hash).del(store.apiTokenNames, key)
      }
    },
  }
}
