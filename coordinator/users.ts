/**
 * Users and sessions: the first user (the owner), login by username or
 * email, session tokens kept only as hashes, and the check every
 * authenticated request goes through.
 */
import { randomUUID } from 'node:crypto'
import type { CreateFirstUserRequest, User } from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { assertName } from '../sdk/names.ts'
import { SESSION_TTL } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { SessionRecord, UserRecord } from './records.ts'
import {
  decoyPasswordHash,
  hashPassword,
  hashToken,
  newSessionToken,
  SESSION_TOKEN_PREFIX,
  verifyPassword,
} from './secrets.ts'
import type { Store } from './store.ts'

export interface UsersComponents {
  store: Store
  locks: KeyedLock
  log: Logger
  /** Current time in ms; Date.now unless a test sets a clock. */
  now?: () => number
}

export interface Users {
  hasFirstUser(): Promise<boolean>
  /** Creates the owner; MESH_FIRST_USER_EXISTS once any user exists. */
  createFirstUser(request: CreateFirstUserRequest): Promise<UserRecord>
  /** Checks the password and opens a session; MESH_BAD_CREDENTIALS otherwise. */
  login(usernameOrEmail: string, password: string): Promise<{ token: string; user: UserRecord }>
  /** The user a session token belongs to; MESH_UNAUTHENTICATED if none or expired. */
  authenticate(token: string): Promise<UserRecord>
  logout(token: string): Promise<void>
  get(id: string): Promise<UserRecord | undefined>
  /** Deletes expired sessions; returns how many. */
  sweepSessions(): Promise<number>
}

const FIRST_USER_LOCK = 'users:first'

/** The API shape of a user: no password hash. */
export function toUser(record: UserRecord): User {
  return {
    id: record.id,
    username: record.username,
    email: record.email,
    roles: record.roles,
    createdAt: record.createdAt,
  }
}

export function unauthenticated(detail: string): MeshError {
  return new MeshError('MESH_UNAUTHENTICATED', 'You are not logged in, or your session expired.', {
    detail,
  })
}

export function createUsers(components: UsersComponents): Users {
  const { store, locks } = components
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
      assertName('user', request.username)
      return locks.run(FIRST_USER_LOCK, async () => {
        if (await anyUser()) {
          throw new MeshError('MESH_FIRST_USER_EXISTS', 'The first user already exists; log in.')
        }

        const record: UserRecord = {
          id: randomUUID(),
          username: request.username,
          email: request.email.toLowerCase(),
          roles: ['owner'],
          passwordHash: await hashPassword(request.password),
          createdAt: new Date(now()).toISOString(),
        }
        await store
          .batch()
          .put(store.users, record.id, record)
          .put(store.usernames, record.username, record.id)
          .put(store.emails, record.email, record.id)
          .write({ sync: true })
        log.info({ user_id: record.id, username: record.username }, 'first user created')
        return record
      })
    },

    async login(usernameOrEmail, password) {
      const user = await findByLogin(usernameOrEmail)
      // Hash against a decoy when the user is unknown: same answer, same time.
      const ok = await verifyPassword(password, user?.passwordHash ?? (await decoyPasswordHash()))
      if (user === undefined || !ok) {
        throw new MeshError('MESH_BAD_CREDENTIALS', 'Wrong username or password.')
      }

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
      if (!token.startsWith(SESSION_TOKEN_PREFIX)) throw unauthenticated('not a session token')

      const key = hashToken(token)
      const session = await store.sessions.get(key)
      if (session === undefined) throw unauthenticated('unknown session token')
      if (session.expiresAt <= now()) {
        await store.sessions.del(key)
        throw unauthenticated('session expired')
      }

      const user = await store.users.get(session.userId)
      if (user === undefined) throw unauthenticated('the session belongs to no user')
      return user
    },

    async logout(token) {
      await store.sessions.del(hashToken(token), { sync: true })
    },

    get: (id) => store.users.get(id),

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
