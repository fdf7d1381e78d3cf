/**
 * Users and sessions: the first user (the owner), login by username or
 * email behind the login limits, session tokens kept only as hashes, and
 * the check every authenticated request goes through. Managing other users
 * (create, roles, suspend, delete, passwords) is in user-admin.ts.
 */
import { randomUUID } from 'node:crypto'
import type { CreateFirstUserRequest, User } from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { assertName } from '../sdk/names.ts'
import { RESERVED_USERNAMES, SESSION_TTL } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { LoginLimits } from './login-limits.ts'
import type { SessionRecord, UserRecord } from './records.ts'
import {
  API_TOKEN_PREFIX,
  decoyPasswordHash,
  hashPassword,
  hashToken,
  newSessionToken,
  SESSION_TOKEN_PREFIX,
  verifyPassword,
} from './secrets.ts'
import type { Batch, Store } from './store.ts'
import type { ApiTokens } from './tokens.ts'

export interface UsersComponents {
  store: Store
  locks: KeyedLock
  log: Logger
  tokens: ApiTokens
  limits: LoginLimits
  /** Current time in ms; Date.now unless a test sets a clock. */
  now?: () => number
}

export interface Users {
  hasFirstUser(): Promise<boolean>
  /** Creates the owner; MESH_FIRST_USER_EXISTS once any user exists. */
  createFirstUser(request: CreateFirstUserRequest): Promise<UserRecord>
  /**
   * Checks the password and opens a session: 429 when `address` or the
   * login is throttled or locked, MESH_BAD_CREDENTIALS for a wrong password,
   * MESH_USER_SUSPENDED for a suspended user.
   */
  login(
    usernameOrEmail: string,
    password: string,
    address: string,
  ): Promise<{ token: string; user: UserRecord }>
  /**
   * The user a session or API token belongs to: MESH_UNAUTHENTICATED if the
   * token is unknown, expired or revoked, MESH_USER_SUSPENDED if its user is.
   */
  authenticate(token: string): Promise<UserRecord>
  /** Ends a session; an API token is left alone (delete it by name). */
  logout(token: string): Promise<void>
  get(id: string): Promise<UserRecord | undefined>
  byName(username: string): Promise<UserRecord | undefined>
  /** Adds the deletion of the user's sessions, except `keep`, to `batch`. */
  endSessions(userId: string, batch: Batch, keep?: string): Promise<void>
  /** Deletes expired sessions; returns how many. */
  sweepSessions(): Promise<number>
}

const FIRST_USER_LOCK = 'users:first'

/** The lock every change to the set of users or their roles and status runs under. */
export const USERS_LOCK = 'users:admin'

/** The API shape of a user: no password hash. */
export function toUser(record: UserRecord): User {
  return {
    id: record.id,
    username: record.username,
    email: record.email,
    roles: record.roles,
    status: record.status,
    createdAt: record.createdAt,
  }
}

export function unauthenticated(detail: string): MeshError {
  return new MeshError('MESH_UNAUTHENTICATED', 'You are not logged in, or your session expired.', {
    detail,
  })
}

export function suspended(): MeshError {
  return new MeshError(
    'MESH_USER_SUSPENDED',
    'Your account is suspended: ask an administrator to activate it.',
  )
}

/** MESH_INVALID_NAME for a name that breaks the rule or is one of the reserved route names. */
export function assertUsername(username: string): void {
  assertName('user', username)
  if (RESERVED_USERNAMES.includes(username)) {
    throw new MeshError(
      'MESH_INVALID_NAME',
      `The user name ${JSON.stringify(username)} is reserved.`,
      {
        validations: [{ field: 'username', detail: 'is reserved' }],
      },
    )
  }
}

export interface NewUser {
  username: string
  /** Stored lowercased, as the email index is. */
  email: string
  roles: string[]
  password: string
  createdAt: string
}

/**
 * Writes a new active user and its username and email index entries in one
 * synced batch. Callers hold USERS_LOCK and have checked that neither the
 * username nor the email is taken.
 */
export async function insertUser(store: Store, user: NewUser): Promise<UserRecord> {
  const record: UserRecord = {
    id: randomUUID(),
    username: user.username,
    email: user.email.toLowerCase(),
    roles: [...new Set(user.roles)],
    passwordHash: await hashPassword(user.password),
    status: 'active',
    createdAt: user.createdAt,
  }
  await store
    .batch()
    .put(store.users, record.id, record)
    .put(store.usernames, record.username, record.id)
    .put(store.emails, record.email, record.id)
    .write({ sync: true })
  return record
}

export function createUsers(components: UsersComponents): Users {
  const { store, locks, tokens, limits } = components
  const log = components.log.child({ component: 'users' })
  const now = components.now ?? Date.now

  async function anyUser(): Promise<boolean> {
    for await (const _ of store.users.entries({ limit: 1 })) return true
    return false
  }

  async function findByLogin(usernameOrEmail: string): Promise<UserRecord | undefined> {
    const id =
      (await store.usernames.get(usernameOrEmail)) ??
      (await store.emails.get(usernameOrEmail.toLowerCase()))
    return id === undefined ? undefined : store.users.get(id)
  }

  return {
    hasFirstUser: anyUser,

    createFirstUser(request) {
      assertUsername(request.username)
      return locks.run(FIRST_USER_LOCK, async () => {
        if (await anyUser()) {
          throw new MeshError('MESH_FIRST_USER_EXISTS', 'The first user already exists; log in.')
        }

        const record = await insertUser(store, {
          username: request.username,
          email: request.email,
          roles: ['owner'],
          password: request.password,
          createdAt: new Date(now()).toISOString(),
        })
        log.info({ user_id: record.id, username: record.username }, 'first user created')
        return record
      })
    },

    async login(usernameOrEmail, password, address) {
      const user = await findByLogin(usernameOrEmail)
      // Unknown names are throttled and locked too, under their own key, so
      // the answers do not tell which names exist.
      const key = user === undefined ? `name:${usernameOrEmail.toLowerCase()}` : `user:${user.id}`
      limits.admit(key, address)

      // Hash against a decoy when the user is unknown: same answer, same time.
      const ok = await verifyPassword(password, user?.passwordHash ?? (await decoyPasswordHash()))
      if (user === undefined || !ok) {
        limits.failed(key)
        throw new MeshError('MESH_BAD_CREDENTIALS', 'Wrong username or password.')
      }
      limits.succeeded(key)
      if (user.status === 'suspended') throw suspended()

      const token = newSessionToken()
      const session: SessionRecord = {
        userId: user.id,
        createdAt: new Date(now()).toISOString(),
        expiresAt: now() + SESSION_TTL,
      }
      await store.sessions.put(hashToken(token), session, { sync: true })
      log.info({ user_id: user.id }, 'session opened')
      return { token, user }
    },

    async authenticate(token) {
      let userId: string
      if (token.startsWith(SESSION_TOKEN_PREFIX)) {
        const key = hashToken(token)
        const session = await store.sessions.get(key)
        if (session === undefined) throw unauthenticated('unknown session token')
        if (session.expiresAt <= now()) {
          await store.sessions.del(key)
          throw unauthenticated('session expired')
        }
        userId = session.userId
      } else if (token.startsWith(API_TOKEN_PREFIX)) {
        const owner = await tokens.verify(token)
        if (owner === undefined) throw unauthenticated('unknown, deleted or expired API token')
        userId = owner
      } else {
        throw unauthenticated('not a session or API token')
      }

      const user = await store.users.get(userId)
      if (user === undefined) throw unauthenticated('the token belongs to no user')
      if (user.status === 'suspended') throw suspended()
      return user
    },

    async logout(token) {
      if (token.startsWith(SESSION_TOKEN_PREFIX)) {
        await store.sessions.del(hashToken(token), { sync: true })
      }
    },

    get: (id) => store.users.get(id),

    async byName(username) {
      const id = await store.usernames.get(username)
      return id === undefined ? undefined : store.users.get(id)
    },

    async endSessions(userId, batch, keep) {
      const kept = keep === undefined ? undefined : hashToken(keep)
      for await (const [key, session] of store.sessions.entries()) {
        if (session.userId === userId && key !== kept) batch.del(store.sessions, key)
      }
    },

    async sweepSessions() {
      let count = 0
      for await (const [key, session] of store.sessions.entries()) {
        if (session.expiresAt > now()) continue
        await store.sessions.del(key)
        count++
      }
      return count
    },
  }
}
