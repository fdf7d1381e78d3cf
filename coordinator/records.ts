/**
 * What the coordinator keeps in its store, one interface per kind. These
 * are storage shapes, not API shapes: they may hold hashes and internal ids
 * that responses leave out.
 */
import type {
  AgentLifecycle,
  AgentLogInput,
  AgentStats,
  AuditEntry,
  Build,
  BuildLogLine,
  ListeningPort,
  UserStatus,
} from '../sdk/api-types.ts'

export interface MetaRecord {
  schemaVersion: number
  createdAt: string
}

/** Secrets the coordinator generates once and keeps. */
export interface KeysRecord {
  /** The libp2p identity (protobuf, base64), so the relay's peer id survives restarts. */
  relayKey: string
  /** The Ed25519 ticket signing key, PKCS#8 DER in base64. */
  ticketKey: string
}

export interface UserRecord {
  id: string
  username: string
  email: string
  roles: string[]
  /** `scrypt$N$r$p$salt$hash`, see secrets.ts. */
  passwordHash: string
  /** Since schema version 2; a suspended user's tokens and sessions do not authenticate. */
  status: UserStatus
  createdAt: string
}

/** Keyed by sha256(token) in hex; the token itself is never stored. */
export interface ApiTokenRecord {
  userId: string
  name: string
  createdAt: string
  /** Milliseconds since the epoch. */
  expiresAt: number
  /** Milliseconds since the epoch, updated at most once a minute. */
  lastUsedAt?: number
}

/** One audit log entry; its key is its id. */
export type AuditRecord = Omit<AuditEntry, 'id'>

/** A ticket /connect issued, kept until it expires so it can be revoked. */
export interface TicketRecord {
  workspaceId: string
  /** The client peer id the ticket is bound to. */
  client: string
  agent: string
  /** Milliseconds since the epoch. */
  expiresAt: number
}

/** Tickets of a client peer to one workspace's agent that no longer count. */
export interface RevocationRecord {
  userId: string
  /** Milliseconds since the epoch: when the last revoked ticket would have expired. */
  expiresAt: number
}

/** Keyed by sha256(token) in hex; the token itself is never stored. */
export interface SessionRecord {
  userId: string
  createdAt: string
  /** Milliseconds since the epoch. */
  expiresAt: number
}

export interface TemplateRecord {
  name: string
  activeVersion: number
  versions: number
  createdAt: string
  updatedAt: string
}

export interface TemplateVersionRecord {
  template: string
  version: number
  message: string
  files: string[]
  createdBy: string
  createdAt: string
}

/** A template version's contents, kept apart so listings stay cheap. */
export interface TemplateFilesRecord {
  files: { path: string; content: string }[]
}

export interface AgentRecord {
  peerId: string
  addrs: string[]
  version: string
  lastSeenAt: string
}

export interface WorkspaceRecord {
  id: string
  name: string
  ownerId: string
  template: string
  templateVersion: number
  parameters: Record<string, string>
  createdAt: string
  latestBuildId: string
  buildCount: number
  /** sha256(agent token) in hex; absent while no start build has issued one. */
  agentTokenHash?: string
  agent?: AgentRecord
}

export interface BuildRecord extends Build {
  ownerId: string
}

export type LogRecord = Omit<BuildLogLine, 'type'>

/**
 * What a workspace's agent last reported, keyed by workspace id. Only the
 * latest is kept; it counts only while `agentTokenHash` is the workspace's
 * (a new start, or a stop, makes it stale).
 */
export interface AgentReportRecord {
  agentTokenHash: string
  lifecycle: AgentLifecycle
  startError?: string
  stats?: AgentStats
  ports?: ListeningPort[]
  updatedAt: string
}

/**
 * One line of a workspace's agent log, keyed `<workspace id>/<seq, 10
 * digits>`; only the latest start build's lines are kept.
 */
export interface AgentLogRecord extends AgentLogInput {
  seq: number
  buildId: string
}
