/**
 * Who may do what: the one permission table, action → roles that allow it,
 * and the one check every route goes through (`authorize`). Roles add up:
 * a user holding several may do what any of them allows.
 *
 * Actions without `-any` act on the caller's own things (their workspaces,
 * their tokens, their password); the `-any` variants act on anyone's.
 */
import { ROLES, type Role } from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'

const EVERYONE = ROLES
const OWNER = ['owner'] as const
const USER_ADMINS = ['owner', 'user-admin'] as const

/** The permission table. The RBAC test walks every route against it. */
export const PERMISSIONS = {
  /** Read your own user, log out. */
  'self:read': EVERYONE,
  /** Change your own password. */
  'self:update': EVERYONE,
  /** Create, list and delete your own API tokens. */
  'token:manage': EVERYONE,
  'template:read': EVERYONE,
  'template:write': ['owner', 'template-admin'],
  /** Your own workspaces and builds. */
  'workspace:read': EVERYONE,
  'workspace:write': EVERYONE,
  'workspace:connect': EVERYONE,
  /** Anyone's workspaces and builds. */
  'workspace:read-any': OWNER,
  'workspace:write-any': OWNER,
  'workspace:connect-any': OWNER,
  'user:read': USER_ADMINS,
  'user:create': USER_ADMINS,
  /** Roles, and other users' passwords. */
  'user:update': USER_ADMINS,
  'user:suspend': USER_ADMINS,
  'user:delete': USER_ADMINS,
  'audit:read': ['owner', 'auditor'],
} as const satisfies Record<string, readonly Role[]>

export type Action = keyof typeof PERMISSIONS

export const ACTIONS = Object.keys(PERMISSIONS) as Action[]

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value)
}

/** Whether a user holding `roles` may perform `action`. */
export function can(roles: readonly string[], action: Action): boolean {
  const allowed: readonly string[] = PERMISSIONS[action]
  return roles.some((role) => allowed.includes(role))
}

/** Throws 403 MESH_FORBIDDEN unless `roles` allow `action`. */
export function authorize(roles: readonly string[], action: Action): void {
  if (can(roles, action)) return
  throw new MeshError('MESH_FORBIDDEN', 'You do not have permission to do this.', {
    detail: `needs ${action}, held by ${PERMISSIONS[action].join(', ')}`,
  })
}
