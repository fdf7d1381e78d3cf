/**
 * Errors shared by every role. Each carries a stable `code` (part of the API:
 * scripts branch on it) and an HTTP status for the coordinator to answer
 * with. Messages are sentences safe to show users and may change; codes may
 * not. The table of codes lives in README.md under "Error codes".
 */

export const ERROR_STATUS = {
  MESH_BAD_REQUEST: 400,
  MESH_VALIDATION: 400,
  MESH_INVALID_NAME: 400,
  MESH_UNAUTHENTICATED: 401,
  MESH_BAD_CREDENTIALS: 401,
  MESH_FORBIDDEN: 403,
  MESH_USER_SUSPENDED: 403,
  MESH_NOT_FOUND: 404,
  MESH_USER_NOT_FOUND: 404,
  MESH_TEMPLATE_NOT_FOUND: 404,
  MESH_WORKSPACE_NOT_FOUND: 404,
  MESH_BUILD_NOT_FOUND: 404,
  MESH_TOKEN_NOT_FOUND: 404,
  MESH_FIRST_USER_EXISTS: 409,
  MESH_USER_EXISTS: 409,
  MESH_USER_HAS_WORKSPACES: 409,
  MESH_LAST_OWNER: 409,
  MESH_TOKEN_EXISTS: 409,
  MESH_WORKSPACE_EXISTS: 409,
  MESH_BUILD_IN_PROGRESS: 409,
  MESH_WORKSPACE_NOT_RUNNING: 409,
  MESH_AGENT_NOT_CONNECTED: 409,
  MESH_BODY_TOO_LARGE: 413,
  MESH_UNSUPPORTED_MEDIA_TYPE: 415,
  MESH_RATE_LIMITED: 429,
  MESH_LOGIN_LOCKED: 429,
  MESH_INTERNAL: 500,
  MESH_UNAVAILABLE: 503,
  // Client-side codes: never sent by the coordinator.
  MESH_NOT_LOGGED_IN: 0,
  MESH_SERVER_UNREACHABLE: 0,
  MESH_CONNECT_FAILED: 0,
  MESH_BUILD_FAILED: 0,
  MESH_BAD_ARGUMENT: 0,
  MESH_TICKET_INVALID: 0,
  MESH_PROVISION_FAILED: 0,
  MESH_PROVISION_CANCELED: 0,
  /** The URL answered, but not like a coordinator (HTML, `{}`, another API). */
  MESH_NOT_A_COORDINATOR: 0,
  /** The CLI cannot save a file of its own: its session, or the SSH config it edits. */
  MESH_CONFIG_UNWRITABLE: 0,
  /** config-ssh found its block's marker lines out of order, doubled or missing. */
  MESH_SSH_CONFIG_MALFORMED: 0,
  /** `coder-mesh connect` is already running for this config folder. */
  MESH_ALREADY_RUNNING: 0,
  /** A running `connect` serves another login or coordinator than the asking command's. */
  MESH_LINK_OTHER_SESSION: 0,
} as const

export type ErrorCode = keyof typeof ERROR_STATUS

/** One field that failed validation, as sent in the error envelope. */
export interface Validation {
  field: string
  detail: string
}

/** The body of every error the HTTP API returns. */
export interface ErrorEnvelope {
  code: ErrorCode
  message: string
  detail?: string
  validations?: Validation[]
  /** Seconds to wait before trying again (429 answers; also sent as Retry-After). */
  retryAfterSeconds?: number
}

export interface MeshErrorInit {
  detail?: string
  validations?: Validation[]
  /** Seconds to wait before trying again, for rate limits and lockouts. */
  retryAfterSeconds?: number
  cause?: unknown
}

/**
 * An error with a stable code. `name` is set so checks work even when two
 * copies of this module are loaded (compare `err.name === 'MeshError'`).
 */
export class MeshError extends Error {
  static readonly NAME = 'MeshError'
  readonly code: ErrorCode
  readonly detail?: string
  readonly validations?: Validation[]
  readonly retryAfterSeconds?: number

  constructor(code: ErrorCode, message: string, init: MeshErrorInit = {}) {
    super(message, { cause: init.cause })
    this.name = MeshError.NAME
    this.code = code
    this.detail = init.detail
    this.validations = init.validations
    this.retryAfterSeconds = init.retryAfterSeconds
  }

  /** The HTTP status this error maps to; 500 for client-side codes. */
  get status(): number {
    const status = ERROR_STATUS[this.code]
    return status === 0 ? 500 : status
  }

  toJSON(): ErrorEnvelope {
    const body: ErrorEnvelope = { code: this.code, message: this.message }
    if (this.detail !== undefined) body.detail = this.detail
    if (this.validations !== undefined) body.validations = this.validations
    if (this.retryAfterSeconds !== undefined) body.retryAfterSeconds = this.retryAfterSeconds
    return body
  }
}

export function isMeshError(err: unknown): err is MeshError {
  return err instanceof Error && err.name === MeshError.NAME
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_STATUS, value)
}
