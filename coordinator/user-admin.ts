/**
 * Managing users: create, list, roles, suspend and activate, delete, and
 * passwords. Route permissions come from rbac.ts; the rules here are the
 * ones a permission table cannot say:
 *
 * - only an owner may grant the owner role or change a user who holds it;
 * - the last active owner cannot be suspended, deleted or demoted;
 * - a user who still owns workspaces cannot be deleted;
 * - suspending or deleting a user ends their sessions at once and revokes
 *   the mesh tickets they hold (agents drop those connections on their
 *   next heartbeat); deletion also deletes their API tokens.
 */
import type {
  ChangePasswordRequest,
  CreateUserRequest,
  Role,
  UserStatus,
} from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { ownerLock } from './builds.ts'
import type { KeyedLock } from './lock.ts'
import type { UserRecord } from './records.ts'
import { hashPassword, verifyPassword } from './secrets.ts'
import type { Store } from './store.ts'
import type { ApiTokens } from './tokens.ts'
import { assertUsername, insertUser, USERS_LOCK, type Users } from './users.ts'

export interface UserAdminComponents {
  store: Store
  locks: KeyedLock
  log: Logger
  users: Users
  tokens: ApiTokens
  /** Revokes every unexpired mesh ticket issued to the user. */
  revokeTickets: (userId: string) => Promise<void>
  now?: () => number
}

export interface UserAdmin {
  /** Creates a user; only an owner may create an owner. */
  create(actor: UserRecord, request: CreateUserRequest): Promise<UserRecord>
  /** One page of users, by username. */
  list(page: { limit: number; offset: number }): Promise<{ items: UserRecord[]; more: boolean }>
  /** The user named `username`; MESH_USER_NOT_FOUND otherwise. */
  find(username: string): Promise<UserRecord>
  setRoles(actor: UserRecord, username: string, roles: Role[]): Promise<UserRecord>
  setStatus(actor: UserRecord, username: string, status: UserStatus): Promise<UserRecord>
  delete(actor: UserRecord, username: string): Promise<void>
  /**
   * Sets a password. For your own, `oldPassword` must be right and your
   * other sessions end; for another user's, their sessions all end.
   */
  changePassword(
    actor: UserRecord,
    username: string,
    request: ChangePasswordRequest,
    currentToken: string,
  ): Promise<void>
}

function forbidden(message: string): MeshError {
  return new MeshError('MESH_FORBIDDEN', message)
}

function notFound(username: string): MeshError {
  return new MeshError('MESH_USER_NOT_FOUND', `User ${JSON.stringify(username)} does not exist.`)
}

function lastOwner(): MeshError {
  return new MeshError(
    'MESH_LAST_OWNER',
    'This is the last active owner: make another user an owner first.',
  )
}

export function createUserAdmin(components: UserAdminComponents): UserAdmin {
  const { store, locks, users, tokens } = components
  const log = components.log.child({ component: 'user-admin' })
  const now = components.now ?? Date.now

  async function find(username: string): Promise<UserRecord> {
    const user = await users.byName(username)
    if (user === undefined) throw notFound(username)
    return user
  }

  /** Only an owner may change an owner. */
  function assertMayChange(actor: UserRecord, target: UserRecord): void {
    if (target.roles.includes('owner') && !actor.roles.includes('owner')) {
      throw forbidden('Only an owner can change a user who is an owner.')
    }
  }

  /** Deletes `target` and what only it used; call under USERS_LOCK and its ownerLock. */
  async function deleteLocked(target: UserRecord, username: string): Promise<UserRecord> {
    const owned = store.workspaceNames.entries({ prefix: `${target.id}/`, limit: 1 })
    if ((await owned.next()).done !== true) {
      await owned.return(undefined)
      throw new MeshError(
        'MESH_USER_HAS_WORKSPACES',
        `User ${username} still has workspaces: delete them first.`,
      )
    }

    const batch = store
      .batch()
      .del(store.users, target.id)
      .del(store.usernames, target.username)
      .del(store.emails, target.email)
    await users.endSessions(target.id, batch)
    await tokens.deleteAllOf(target.id, batch)
    await batch.write({ sync: true })
    log.info({ user_id: target.id, username }, 'user deleted')
    return target
  }

  /** MESH_LAST_OWNER when `target` is the only active owner. Call under USERS_LOCK. */
  async function assertNotLastOwnerLocked(target: UserRecord): Promise<void> {
    if (!target.roles.includes('owner') || target.status !== 'active') return
    for await (const user of store.users.values()) {
      if (user.id !== target.id && user.status === 'active' && user.roles.includes('owner')) return
    }
    throw lastOwner()
  }

  return {
    create(actor, request) {
      assertUsername(request.username)
      if (request.roles?.includes('owner') === true && !actor.roles.includes('owner')) {
        throw forbidden('Only an owner can create another owner.')
      }
      return locks.run(USERS_LOCK, async () => {
        const email = request.email.toLowerCase()
        if ((await store.usernames.get(request.username)) !== undefined) {
          throw new MeshError(
            'MESH_USER_EXISTS',
            `A user named ${JSON.stringify(request.username)} already exists.`,
          )
        }
        if ((await store.emails.get(email)) !== undefined) {
          throw new MeshError('MESH_USER_EXISTS', `A user with email ${email} already exists.`)
        }

        const record = await insertUser(store, {
          username: request.username,
          email,
          roles: request.roles ?? ['member'],
          password: request.password,
          createdAt: new Date(now()).toISOString(),
        })
        log.info({ user_id: record.id, username: record.username }, 'user created')
        return record
      })
    },

    async list({ limit, offset }) {
      const items: UserRecord[] = []
      let skipped = 0
      for await (const id of store.usernames.values()) {
        if (skipped++ < offset) continue
        if (items.length === limit) return { items, more: true }
        const user = await store.users.get(id)
        if (user !== undefined) items.push(user)
      }
      return { items, more: false }
    },

    find,

    setRoles(actor, username, roles) {
      return locks.run(USERS_LOCK, async () => {
        const target = await find(username)
        assertMayChange(actor, target)
        const next = [...new Set(roles)]
        if (next.includes('owner') && !actor.roles.includes('owner')) {
          throw forbidden('Only an owner can make another user an owner.')
        }
        if (!next.includes('owner')) await assertNotLastOwnerLocked(target)

        const updated = { ...target, roles: next }
        await store.users.put(target.id, updated, { sync: true })
        log.info({ user_id: target.id, roles: next }, 'roles changed')
        return updated
      })
    },

    async setStatus(actor, username, status) {
      const updated = await locks.run(USERS_LOCK, async () => {
        const target = await find(username)
        assertMayChange(actor, target)
        if (target.status === status) return target
        if (status === 'suspended') await assertNotLastOwnerLocked(target)

        const updated = { ...target, status }
        const batch = store.batch().put(store.users, target.id, updated)
        if (status === 'suspended') await users.endSessions(target.id, batch)
        await batch.write({ sync: true })
        log.info({ user_id: target.id, status }, 'user status changed')
        return updated
      })
      if (status === 'suspended') await components.revokeTickets(updated.id)
      return updated
    },

    async delete(actor, username) {
      const target = await locks.run(USERS_LOCK, async () => {
        const target = await find(username)
        assertMayChange(actor, target)
        await assertNotLastOwnerLocked(target)
        // A workspace being created now is either seen here or refused there.
        return locks.run(ownerLock(target.id), () => deleteLocked(target, username))
      })
      await components.revokeTickets(target.id)
    },

    async changePassword(actor, username, request, currentToken) {
      const target = await find(username)
      const self = target.id === actor.id
      if (self) {
        const ok =
          request.oldPassword !== undefined &&
          (await verifyPassword(request.oldPassword, target.passwordHash))
        if (!ok) {
          throw new MeshError('MESH_BAD_CREDENTIALS', 'The current password is wrong.', {
            validations: [{ field: 'oldPassword', detail: 'does not match' }],
          })
        }
      } else {
        assertMayChange(actor, target)
      }

      const passwordHash = await hashPassword(request.password)
      await locks.run(USERS_LOCK, async () => {
        const fresh = await store.users.get(target.id)
        if (fresh === undefined) throw notFound(username)
        const batch = store.batch().put(store.users, fresh.id, { ...fresh, passwordHash })
        await users.endSessions(fresh.id, batch, self ? currentToken : undefined)
        await batch.write({ sync: true })
      })
      log.info({ user_id: target.id, by: actor.id }, 'password changed')
    },
  }
}
