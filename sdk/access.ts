/**
 * Roles and API token lifetimes: plain values shared by the coordinator
 * and the CLI. Kept apart from api-types.ts (which loads zod) so that CLI
 * commands naming them still start fast.
 */

/** Every role a user can hold; coordinator/rbac.ts says what each allows. */
export const ROLES = ['owner', 'user-admin', 'template-admin', 'auditor', 'member'] as const
export type Role = (typeof ROLES)[number]

/** Longest lifetime of an API token: one year, in seconds. */
export const MAX_TOKEN_LIFETIME_SECONDS = 365 * 24 * 3600

/** Lifetime of an API token when none is asked for: 30 days, in seconds. */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 30 * 24 * 3600
