/**
 * The coordinator's HTTP contract under `/api/v1`, shared by the server, the
 * CLI and the agent. Requests and responses are zod schemas: the server
 * validates request bodies and queries with them, the OpenAPI document at
 * `/api/v1/openapi.json` is generated from them, and the types of the same
 * names are inferred from them.
 *
 * The routes themselves, with the permission each needs, are listed in one
 * table (`routeTable` in coordinator/api.ts, built from coordinator/routes-*.ts)
 * that both registers and documents them.
 * Every request except login, first-user setup and the probes carries
 * `Authorization: Bearer <token>`: a session token (`cms_`), an API token
 * (`cmt_`) or, for agent registration, an agent token (`cma_`). Errors are
 * ErrorEnvelope bodies (sdk/errors.ts).
 *
 * Listings take `?limit=` (1 to 1000, default 100) and `?offset=`; when more
 * items follow, the response carries `X-Next-Offset` and a `Link` header
 * with `rel="next"`. Bodies stay plain arrays.
 */
import { z } from 'zod'
import { MAX_TOKEN_LIFETIME_SECONDS, ROLES } from './access.ts'

export {
  DEFAULT_TOKEN_LIFETIME_SECONDS,
  MAX_TOKEN_LIFETIME_SECONDS,
  ROLES,
  type Role,
} from './access.ts'

// ---------------------------------------------------------------- common

const password = z.string().min(8, 'must be at least 8 characters').max(256)
const username = z.string().min(1).max(64)
const isoTime = z.string().max(64)

/** `?limit=&offset=` of every listing. */
export const ListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  offset: z.coerce.number().int().min(0).max(1_000_000_000).default(0),
})
export type ListQuery = z.infer<typeof ListQuery>

/** The most items one page of a listing holds. */
export const MAX_PAGE_SIZE = 1000

// ---------------------------------------------------------------- requests

export const CreateFirstUserRequest = z.strictObject({
  username,
  email: z.email().max(254),
  password,
})
export type CreateFirstUserRequest = z.infer<typeof CreateFirstUserRequest>

export const LoginRequest = z.strictObject({ username, password: z.string().min(1).max(256) })
export type LoginRequest = z.infer<typeof LoginRequest>

export const CreateUserRequest = z.strictObject({
  username,
  email: z.email().max(254),
  password,
  /** Default: member. */
  roles: z.array(z.enum(ROLES)).min(1).max(ROLES.length).optional(),
})
export type CreateUserRequest = z.infer<typeof CreateUserRequest>

export const UpdateRolesRequest = z.strictObject({
  roles: z.array(z.enum(ROLES)).min(1).max(ROLES.length),
})
export type UpdateRolesRequest = z.infer<typeof UpdateRolesRequest>

export const ChangePasswordRequest = z.strictObject({
  /** Required when changing your own password. */
  oldPassword: z.string().min(1).max(256).optional(),
  password,
})
export type ChangePasswordRequest = z.infer<typeof ChangePasswordRequest>

export const CreateApiTokenRequest = z.strictObject({
  name: z.string().min(1).max(64),
  /** Seconds until the token expires; default 30 days, at most a year. */
  lifetimeSeconds: z.number().int().min(60).max(MAX_TOKEN_LIFETIME_SECONDS).optional(),
})
export type CreateApiTokenRequest = z.infer<typeof CreateApiTokenRequest>

export const AuditQuery = ListQuery.extend({
  /** Only entries by this username. */
  user: z.string().min(1).max(64).optional(),
  /** Only this action, or every action under a prefix ending in "." (e.g. `user.`). */
  action: z.string().min(1).max(64).optional(),
  /** Only entries at or after this time (ISO 8601). */
  since: z.iso.datetime({ offset: true }).optional(),
})
export type AuditQuery = z.infer<typeof AuditQuery>

export const TemplateFile = z.strictObject({
  path: z.string().min(1).max(512),
  /** File contents, base64. */
  content: z.string(),
})
export type TemplateFile = z.infer<typeof TemplateFile>

export const PushTemplateRequest = z.strictObject({
  files: z.array(TemplateFile).min(1).max(1000),
  message: z.string().max(1000).optional(),
})
export type PushTemplateRequest = z.infer<typeof PushTemplateRequest>

export const CreateWorkspaceRequest = z.strictObject({
  name: z.string(),
  template: z.string(),
  parameters: z.record(z.string(), z.string()).optional(),
})
export type CreateWorkspaceRequest = z.infer<typeof CreateWorkspaceRequest>

export const TRANSITIONS = ['start', 'stop', 'delete'] as const
export type Transition = (typeof TRANSITIONS)[number]

export const CreateBuildRequest = z.strictObject({ transition: z.enum(TRANSITIONS) })
export type CreateBuildRequest = z.infer<typeof CreateBuildRequest>

/** `?owner=USERNAME` acts on another user's workspace (needs the `-any` permission). */
export const OwnerQuery = z.object({ owner: z.string().min(1).max(64).optional() })
export type OwnerQuery = z.infer<typeof OwnerQuery>

export const WorkspaceListQuery = ListQuery.extend({
  ...OwnerQuery.shape,
  /** `true`: every user's workspaces (needs workspace:read-any). */
  all: z.enum(['true', 'false']).optional(),
}).refine((query) => !(query.all === 'true' && query.owner !== undefined), {
  message: 'pass owner= or all=true, not both',
  path: ['all'],
})
export type WorkspaceListQuery = z.infer<typeof WorkspaceListQuery>

export const BuildLogsQuery = z.object({ follow: z.enum(['true', 'false', '1', '0']).optional() })

export const ConnectRequest = z.strictObject({
  /** The client's libp2p peer id: the ticket is bound to it. */
  peerId: z.string().min(1).max(128),
})
export type ConnectRequest = z.infer<typeof ConnectRequest>

export const AgentRegisterRequest = z.strictObject({
  peerId: z.string().min(1).max(128),
  /** Multiaddrs the agent listens on, without the /p2p/ suffix. */
  addrs: z.array(z.string().max(512)).max(64),
  version: z.string().max(64),
})
export type AgentRegisterRequest = z.infer<typeof AgentRegisterRequest>

/**
 * Where the agent is in its start (Coder's names): `created` until its start
 * build has ended and it has its startup script, `starting` while the script
 * runs, then `ready`, `start_error` (the script failed) or `start_timeout`;
 * `shutting_down` and `off` when it stops.
 */
export const AGENT_LIFECYCLES = [
  'created',
  'starting',
  'ready',
  'start_error',
  'start_timeout',
  'shutting_down',
  'off',
] as const
export type AgentLifecycle = (typeof AGENT_LIFECYCLES)[number]

const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)

/** What the agent measured last: the workspace's machine, and the agent's own traffic. */
export const AgentStats = z.object({
  /** When the agent measured. */
  time: isoTime,
  /** CPU in use over the last interval, percent of all cores together (0 to 100). */
  cpuPercent: z.number().min(0).max(100),
  cpuCores: count,
  memoryUsedBytes: count,
  memoryTotalBytes: count,
  /** The filesystem holding the workspace's home folder. */
  diskUsedBytes: count,
  diskTotalBytes: count,
  /** Open SSH connections (each `ssh`, `scp` or `coder-mesh ssh` is one). */
  sshSessions: count,
  /** Client connections to the agent by path (relay connections themselves left out). */
  connections: z.object({ direct: count, relayed: count }),
  /** Bytes the mesh services' streams received and sent since the agent started. */
  rxBytes: count,
  txBytes: count,
})
export type AgentStats = z.infer<typeof AgentStats>

/** A TCP port something listens on in the workspace (from /proc/net/tcp and tcp6). */
export const ListeningPort = z.object({
  port: z.number().int().min(1).max(65535),
  network: z.enum(['tcp', 'tcp6']),
  /** The local address, e.g. `0.0.0.0`, `127.0.0.1`, `::`. */
  address: z.string().max(64),
  /** The listening process's name, when the agent could see it. */
  process: z.string().max(64).optional(),
})
export type ListeningPort = z.infer<typeof ListeningPort>

/** Most listening ports an agent reports. */
export const MAX_REPORTED_PORTS = 256

export const AgentReportRequest = z.strictObject({
  lifecycle: z.enum(AGENT_LIFECYCLES),
  /** Why the start failed or timed out, in one line. */
  startError: z.string().max(1000).optional(),
  stats: AgentStats.optional(),
  ports: z.array(ListeningPort).max(MAX_REPORTED_PORTS).optional(),
})
export type AgentReportRequest = z.infer<typeof AgentReportRequest>

export const AGENT_LOG_STREAMS = ['stdout', 'stderr', 'agent'] as const

/** A line of the agent's log, as the agent sends it. */
export const AgentLogInput = z.object({
  time: isoTime,
  /** The startup script's stdout or stderr, or the agent saying what it did. */
  stream: z.enum(AGENT_LOG_STREAMS),
  text: z.string().max(16 * 1024),
})
export type AgentLogInput = z.infer<typeof AgentLogInput>

export const AgentLogsRequest = z.strictObject({
  /** The start build whose startup the lines belong to. */
  buildId: z.string().min(1).max(64),
  lines: z.array(AgentLogInput).min(1).max(1000),
})
export type AgentLogsRequest = z.infer<typeof AgentLogsRequest>

export const AgentLogsQuery = z.object({
  ...OwnerQuery.shape,
  follow: z.enum(['true', 'false', '1', '0']).optional(),
})

// ---------------------------------------------------------------- responses

export const BuildInfo = z.object({ version: z.string() })
export type BuildInfo = z.infer<typeof BuildInfo>

export const FirstUserStatus = z.object({ hasFirstUser: z.boolean() })
export type FirstUserStatus = z.infer<typeof FirstUserStatus>

export const USER_STATUSES = ['active', 'suspended'] as const
export type UserStatus = (typeof USER_STATUSES)[number]

export const User = z.object({
  id: z.string(),
  username: z.string(),
  email: z.string(),
  roles: z.array(z.string()),
  /** Absent from coordinators older than schema version 2; read it as active. */
  status: z.enum(USER_STATUSES).optional(),
  createdAt: isoTime,
})
export type User = z.infer<typeof User>

export const LoginResponse = z.object({ sessionToken: z.string(), user: User })
export type LoginResponse = z.infer<typeof LoginResponse>

export const ApiToken = z.object({
  name: z.string(),
  createdAt: isoTime,
  expiresAt: isoTime,
  /** When the token last authenticated a request (to the minute); absent if never. */
  lastUsedAt: isoTime.optional(),
})
export type ApiToken = z.infer<typeof ApiToken>

export const CreateApiTokenResponse = ApiToken.extend({
  /** The token itself: shown this once, stored only as a hash. */
  token: z.string(),
})
export type CreateApiTokenResponse = z.infer<typeof CreateApiTokenResponse>

export const AUDIT_RESULTS = ['success', 'failure'] as const

export const AuditEntry = z.object({
  /** Monotonic: later entries sort after earlier ones. */
  id: z.string(),
  time: isoTime,
  /** The username acting; for a login, the name that was tried; null when unknown. */
  actor: z.string().nullable(),
  action: z.string(),
  /** What was acted on, e.g. `user:bob`, `workspace:alice/dev`, `template:local`. */
  target: z.string(),
  /** The client's address as the server saw it. */
  address: z.string(),
  result: z.enum(AUDIT_RESULTS),
  status: z.number().int(),
  /** The error code of a failure. */
  code: z.string().optional(),
  requestId: z.string().optional(),
})
export type AuditEntry = z.infer<typeof AuditEntry>

export const Template = z.object({
  name: z.string(),
  activeVersion: z.number().int(),
  versions: z.number().int(),
  createdAt: isoTime,
  updatedAt: isoTime,
})
export type Template = z.infer<typeof Template>

export const TemplateVersion = z.object({
  template: z.string(),
  version: z.number().int(),
  message: z.string(),
  files: z.array(z.string()),
  createdBy: z.string(),
  createdAt: isoTime,
})
export type TemplateVersion = z.infer<typeof TemplateVersion>

export const BUILD_STATUSES = ['queued', 'running', 'succeeded', 'failed'] as const
export type BuildStatus = (typeof BUILD_STATUSES)[number]

export const Build = z.object({
  id: z.string(),
  workspaceId: z.string(),
  workspaceName: z.string(),
  number: z.number().int(),
  transition: z.enum(TRANSITIONS),
  templateVersion: z.number().int(),
  status: z.enum(BUILD_STATUSES),
  /** Why a failed build failed, in one line. */
  error: z.string().optional(),
  createdAt: isoTime,
  startedAt: isoTime.optional(),
  finishedAt: isoTime.optional(),
})
export type Build = z.infer<typeof Build>

/** What the workspace is doing, derived from its latest build. */
export const WORKSPACE_STATUSES = [
  'pending',
  'starting',
  'running',
  'stopping',
  'stopped',
  'deleting',
  'deleted',
  'failed',
] as const
export type WorkspaceStatus = (typeof WORKSPACE_STATUSES)[number]

export const AgentInfo = z.object({
  peerId: z.string(),
  addrs: z.array(z.string()),
  version: z.string(),
  /** True when the agent registered within the last heartbeat window. */
  connected: z.boolean(),
  lastSeenAt: isoTime,
  /** Absent until the agent reports, and from older coordinators. */
  lifecycle: z.enum(AGENT_LIFECYCLES).optional(),
  /** Why the start failed, with `start_error` and `start_timeout`. */
  startError: z.string().optional(),
  /** The latest stats; absent until the agent reports them. */
  stats: AgentStats.optional(),
  /** The workspace's listening TCP ports, as last reported. */
  ports: z.array(ListeningPort).optional(),
})
export type AgentInfo = z.infer<typeof AgentInfo>

export const Workspace = z.object({
  id: z.string(),
  name: z.string(),
  owner: z.string(),
  template: z.string(),
  templateVersion: z.number().int(),
  status: z.enum(WORKSPACE_STATUSES),
  latestBuild: Build,
  agent: AgentInfo.nullable(),
  createdAt: isoTime,
})
export type Workspace = z.infer<typeof Workspace>

export const CreateWorkspaceResponse = z.object({ workspace: Workspace, build: Build })
export type CreateWorkspaceResponse = z.infer<typeof CreateWorkspaceResponse>

export const BuildLogLine = z.object({
  type: z.literal('log'),
  seq: z.number().int(),
  time: isoTime,
  /** Where the line came from: terraform's output or the provisioner itself. */
  source: z.enum(['stdout', 'stderr', 'provisioner']),
  text: z.string(),
})
export type BuildLogLine = z.infer<typeof BuildLogLine>

/** One line of the NDJSON log stream; the last line is always a `build` event. */
export const BuildLogEvent = z.discriminatedUnion('type', [
  BuildLogLine,
  z.object({ type: z.literal('build'), build: Build }),
])
export type BuildLogEvent = z.infer<typeof BuildLogEvent>

export const ConnectResponse = z.object({
  workspaceId: z.string(),
  agent: z.object({ peerId: z.string(), addrs: z.array(z.string()) }),
  /** Circuit relay multiaddrs of the coordinator, each ending in /p2p/<relay>. */
  relays: z.array(z.string()),
  /** The relay's WebSockets multiaddrs (/ws), for browsers; absent from older coordinators. */
  webSocketRelays: z.array(z.string()).optional(),
  /** STUN URLs for WebRTC hole punching (the coordinator's); absent from older coordinators. */
  iceServers: z.array(z.string()).optional(),
  ticket: z.string(),
  expiresAt: isoTime,
})
export type ConnectResponse = z.infer<typeof ConnectResponse>

/** A client peer whose tickets to this agent no longer count, until `expiresAt`. */
export const RevokedPeer = z.object({ peerId: z.string(), expiresAt: isoTime })
export type RevokedPeer = z.infer<typeof RevokedPeer>

export const AgentRegisterResponse = z.object({
  workspaceId: z.string(),
  workspaceName: z.string(),
  owner: z.string(),
  /** The coordinator's Ed25519 ticket key, SPKI DER in base64. */
  ticketPublicKey: z.string(),
  relays: z.array(z.string()),
  /** STUN URLs for WebRTC hole punching (the coordinator's); absent from older coordinators. */
  iceServers: z.array(z.string()).optional(),
  /** How often the agent should register again, in seconds. */
  heartbeatSeconds: z.number(),
  /**
   * Client peers whose tickets were revoked (their user was suspended or
   * deleted): the agent refuses their streams and closes their connections.
   * Absent from older coordinators.
   */
  revokedPeers: z.array(RevokedPeer).optional(),
})
export type AgentRegisterResponse = z.infer<typeof AgentRegisterResponse>

/** What the agent runs once per start, from the start build's Terraform outputs. */
export const AgentStartupResponse = z.object({
  /** False while the start build runs: its outputs are not known yet. Ask again. */
  ready: z.boolean(),
  /** The start build; the agent runs the script once per build. */
  buildId: z.string().optional(),
  /** The `coder_mesh_startup_script` output; empty when the template has none. */
  script: z.string().optional(),
  /** The `coder_mesh_startup_script_timeout` output, seconds; absent: no timeout. */
  timeoutSeconds: z.number().optional(),
  /** Outputs left out because they were unusable, one line each (for the agent log). */
  problems: z.array(z.string()).optional(),
})
export type AgentStartupResponse = z.infer<typeof AgentStartupResponse>

/** One line of a workspace's agent log (`GET /workspaces/:name/agent/logs`, NDJSON). */
export const AgentLogLine = AgentLogInput.extend({
  type: z.literal('log'),
  /** From 1 for each start build. */
  seq: z.number().int(),
  /** The start build the line belongs to. */
  buildId: z.string(),
})
export type AgentLogLine = z.infer<typeof AgentLogLine>

export const ErrorEnvelopeSchema = z.object({
  code: z.string(),
  message: z.string(),
  detail: z.string().optional(),
  validations: z.array(z.object({ field: z.string(), detail: z.string() })).optional(),
  /** For MESH_RATE_LIMITED and MESH_LOGIN_LOCKED: seconds to wait (also in Retry-After). */
  retryAfterSeconds: z.number().int().optional(),
})
