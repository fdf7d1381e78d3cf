/**
 * The coordinator's HTTP contract under `/api/v1`, shared by the server, the
 * CLI and the agent. Request bodies are zod schemas (the server validates
 * with them); responses are the interfaces below.
 *
 * Routes:
 *
 *   GET  /healthz                              liveness, "ok"
 *   GET  /api/v1/buildinfo                     BuildInfo
 *   GET  /api/v1/users/first                   FirstUserStatus
 *   POST /api/v1/users/first       CreateFirstUserRequest -> User (201)
 *   POST /api/v1/users/login       LoginRequest -> LoginResponse
 *   POST /api/v1/users/logout                  204
 *   GET  /api/v1/users/me                      User
 *   GET  /api/v1/templates                     Template[]
 *   POST /api/v1/templates/:name/versions  PushTemplateRequest -> TemplateVersion (201)
 *   GET  /api/v1/templates/:name/versions      TemplateVersion[]
 *   GET  /api/v1/workspaces                    Workspace[] (the caller's)
 *   POST /api/v1/workspaces        CreateWorkspaceRequest -> CreateWorkspaceResponse (201)
 *   GET  /api/v1/workspaces/:name              Workspace
 *   POST /api/v1/workspaces/:name/builds  CreateBuildRequest -> Build (201)
 *   POST /api/v1/workspaces/:name/connect ConnectRequest -> ConnectResponse
 *   GET  /api/v1/builds/:id                    Build
 *   GET  /api/v1/builds/:id/logs[?follow=true] NDJSON of BuildLogEvent
 *   POST /api/v1/agent/register    AgentRegisterRequest -> AgentRegisterResponse
 *                                  (authenticated with the agent token)
 *
 * Every other request is authenticated with `Authorization: Bearer <token>`
 * (a session token). Errors are ErrorEnvelope bodies (sdk/errors.ts).
 */
import { z } from 'zod'

const password = z.string().min(8, 'must be at least 8 characters').max(256)
const username = z.string().min(1).max(64)

export const CreateFirstUserRequest = z.strictObject({
  username,
  email: z.email().max(254),
  password,
})
export type CreateFirstUserRequest = z.infer<typeof CreateFirstUserRequest>

export const LoginRequest = z.strictObject({ username, password: z.string().min(1).max(256) })
export type LoginRequest = z.infer<typeof LoginRequest>

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

export interface BuildInfo {
  version: string
}

export interface FirstUserStatus {
  hasFirstUser: boolean
}

export interface User {
  id: string
  username: string
  email: string
  roles: string[]
  createdAt: string
}

export interface LoginResponse {
  sessionToken: string
  user: User
}

export interface Template {
  name: string
  activeVersion: number
  versions: number
  createdAt: string
  updatedAt: string
}

export interface TemplateVersion {
  template: string
  version: number
  message: string
  files: string[]
  createdBy: string
  createdAt: string
}

export const BUILD_STATUSES = ['queued', 'running', 'succeeded', 'failed'] as const
export type BuildStatus = (typeof BUILD_STATUSES)[number]

export interface Build {
  id: string
  workspaceId: string
  workspaceName: string
  number: number
  transition: Transition
  templateVersion: number
  status: BuildStatus
  /** Why a failed build failed, in one line. */
  error?: string
  createdAt: string
  startedAt?: string
  finishedAt?: string
}

/** What the workspace is doing, derived from its latest build. */
export type WorkspaceStatus =
  'pending' | 'starting' | 'running' | 'stopping' | 'stopped' | 'deleting' | 'deleted' | 'failed'

export interface AgentInfo {
  peerId: string
  addrs: string[]
  version: string
  /** True when the agent registered within the last heartbeat window. */
  connected: boolean
  lastSeenAt: string
}

export interface Workspace {
  id: string
  name: string
  owner: string
  template: string
  templateVersion: number
  status: WorkspaceStatus
  latestBuild: Build
  agent: AgentInfo | null
  createdAt: string
}

export interface CreateWorkspaceResponse {
  workspace: Workspace
  build: Build
}

export interface BuildLogLine {
  type: 'log'
  seq: number
  time: string
  /** Where the line came from: terraform's output or the provisioner itself. */
  source: 'stdout' | 'stderr' | 'provisioner'
  text: string
}

/** One line of the NDJSON log stream; the last line is always a `build` event. */
export type BuildLogEvent = BuildLogLine | { type: 'build'; build: Build }

export interface ConnectResponse {
  workspaceId: string
  agent: { peerId: string; addrs: string[] }
  /** Circuit relay multiaddrs of the coordinator, each ending in /p2p/<relay>. */
  relays: string[]
  ticket: string
  expiresAt: string
}

export interface AgentRegisterResponse {
  workspaceId: string
  workspaceName: string
  owner: string
  /** The coordinator's Ed25519 ticket key, SPKI DER in base64. */
  ticketPublicKey: string
  relays: string[]
  /** How often the agent should register again, in seconds. */
  heartbeatSeconds: number
}
