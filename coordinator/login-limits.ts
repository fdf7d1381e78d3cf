/**
 * Login throttling, checked before any password is hashed. Two token
 * buckets (one per client address, one per login) cap the attempt rate,
 * and a run of wrong passwords locks that one login for a while: even the
 * right password is refused until the lock ends, while other logins from
 * the same address go on working. State lives in memory; a restart clears
 * it, which an attacker cannot cause.
 */
import { MeshError } from '../sdk/errors.ts'
import { MINUTE, SECOND } from '../sdk/config.ts'
import {
  DEFAULT_LOGIN_ADDRESS_BURST,
  DEFAULT_LOGIN_ADDRESS_PER_MINUTE,
  DEFAULT_LOGIN_LOCK_AFTER,
  DEFAULT_LOGIN_LOCK_DURATION,
  DEFAULT_LOGIN_USER_BURST,
  DEFAULT_LOGIN_USER_PER_MINUTE,
  RATE_LIMITER_MAX_KEYS,
} from './constants.ts'

export interface LoginLimitsInit {
  /** Attempts an address may make at once; default 30. */
  addressBurst?: number
  /** Attempts an address regains per minute; default 30. */
  addressPerMinute?: number
  /** Attempts one login may take at once; default 20. */
  userBurst?: number
  /** Attempts one login regains per minute; default 10. */
  userPerMinute?: number
  /** Wrong passwords in a row that lock the login; default 10. */
  lockAfter?: number
  /** How long the lock lasts, in ms; default 15 minutes. */
  lockDuration?: number
}

export interface LoginLimits {
  /**
   * Takes one attempt from `address` and `login`; throws 429
   * MESH_LOGIN_LOCKED or MESH_RATE_LIMITED (with the wait) instead.
   */
  admit(login: string, address: string): void
  /** Counts a wrong password; the lockAfter-th in a row locks the login. */
  failed(login: string): void
  /** Clears the run of wrong passwords. */
  succeeded(login: string): void
}

interface Bucket {
  tokens: number
  updatedAt: number
}

/** Token buckets by key, forgetting the least recently touched past a size limit. */
function buckets(burst: number, perMinute: number, now: () => number) {
  const map = new Map<string, Bucket>()
  const refill = perMinute / MINUTE

  return {
    /** 0 when a token was taken, else the ms until one is there. */
    take(key: string): number {
      const t = now()
      const old = map.get(key)
      const tokens = Math.min(burst, (old?.tokens ?? burst) + (t - (old?.updatedAt ?? t)) * refill)
      map.delete(key) // re-insert: Map order is the eviction order
      if (tokens < 1) {
        map.set(key, { tokens, updatedAt: t })
        return Math.ceil((1 - tokens) / refill)
      }
      map.set(key, { tokens: tokens - 1, updatedAt: t })
      if (map.size > RATE_LIMITER_MAX_KEYS) map.delete(map.keys().next().value!)
      return 0
    },
  }
}

function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / SECOND))
}

export function createLoginLimits(init: LoginLimitsInit = {}, now = Date.now): LoginLimits {
  const byAddress = buckets(
    init.addressBurst ?? DEFAULT_LOGIN_ADDRESS_BURST,
    init.addressPerMinute ?? DEFAULT_LOGIN_ADDRESS_PER_MINUTE,
    now,
  )
  const byLogin = buckets(
    init.userBurst ?? DEFAULT_LOGIN_USER_BURST,
    init.userPerMinute ?? DEFAULT_LOGIN_USER_PER_MINUTE,
    now,
  )
  const lockAfter = init.lockAfter ?? DEFAULT_LOGIN_LOCK_AFTER
  const lockDuration = init.lockDuration ?? DEFAULT_LOGIN_LOCK_DURATION
  /** login → wrong passwords in a row, and when a lock ends. */
  const failures = new Map<string, { count: number; lockedUntil: number }>()

  const limited = (ms: number): MeshError => {
    const wait = seconds(ms)
    return new MeshError('MESH_RATE_LIMITED', `Too many login attempts: try again in ${wait} s.`, {
      retryAfterSeconds: wait,
    })
  }

  return {
    admit(login, address) {
      const state = failures.get(login)
      if (state !== undefined && state.lockedUntil > now()) {
        const wait = seconds(state.lockedUntil - now())
        throw new MeshError(
          'MESH_LOGIN_LOCKED',
          `This login is locked after ${lockAfter} wrong passwords: try again in ${wait} s.`,
          { retryAfterSeconds: wait },
        )
      }
      if (state !== undefined && state.lockedUntil !== 0) failures.delete(login)

      const addressWait = byAddress.take(address)
      if (addressWait > 0) throw limited(addressWait)
      const loginWait = byLogin.take(login)
      if (loginWait > 0) throw limited(loginWait)
    },

    failed(login) {
      const state = failures.get(login) ?? { count: 0, lockedUntil: 0 }
      state.count++
      if (state.count >= lockAfter) state.lockedUntil = now() + lockDuration
      failures.delete(login)
      failures.set(login, state)
      if (failures.size > RATE_LIMITER_MAX_KEYS) failures.delete(failures.keys().next().value!)
    },

    succeeded(login) {
      failures.delete(login)
    },
  }
}
