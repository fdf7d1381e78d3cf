/**
 * A typed client for the coordinator's `/api/v1`, used by the CLI and the
 * agent. Failures become MeshErrors carrying the server's code; a server
 * that cannot be reached is MESH_SERVER_UNREACHABLE, and one that answers
 * but not like a coordinator (an HTML page, `{}`, another API) is
 * MESH_NOT_A_COORDINATOR. Answers are checked for the fields callers rely
 * on, so a foreign server never yields half-filled objects. Names in paths
 * are checked against the naming rule before any request, so `..` can never
 * reach another endpoint.
 */
import { isErrorCode, isMeshError, MeshError } from './errors.ts'
import { assertName, parseWorkspaceRef } from './names.ts'
import type {
  AgentLogLine,
  AgentLogsRequest,
  AgentRegisterRequest,
  AgentRegisterResponse,
  AgentReportRequest,
  AgentStartupResponse,
  ApiToken,
  AuditEntry,
  Build,
  BuildInfo,
  BuildLogEvent,
  ChangePasswordRequest,
  ConnectResponse,
  CreateApiTokenRequest,
  CreateApiTokenResponse,
  CreateFirstUserRequest,
  CreateUserRequest,
  CreateWorkspaceRequest,
  CreateWorkspaceResponse,
  FirstUserStatus,
  LoginResponse,
  PushTemplateRequest,
  Role,
  Template,
  TemplateVersion,
  Transition,
  User,
  Workspace,
} from './api-types.ts'

export interface ApiClientInit {
  /** The coordinator's base URL, e.g. http://127.0.0.1:7080 */
  url: string
  /** A session token, API token or agent token, sent as a Bearer token. */
  token?: string
}

export interface RequestOptions {
  signal?: AbortSignal
}

/** Filters of the audit log; `limit` caps how many entries are fetched in all. */
export interface AuditFilter {
  user?: string
  action?: string
  /** ISO 8601. */
  since?: string
  limit?: number
}

/** Items asked for per page when a listing is read whole. */
const PAGE_SIZE = 500

/**
 * The fields an answer must hold, and their JSON types: only those callers
 * rely on, so newer coordinators may add fields freely.
 */
type Kind = 'string' | 'number' | 'boolean' | 'object' | 'array'
interface Shape {
  readonly [field: string]: Kind | Shape
}

const BUILD_INFO: Shape = { version: 'string' }
const FIRST_USER: Shape = { hasFirstUser: 'boolean' }
const USER: Shape = { username: 'string', roles: 'array' }
const LOGIN: Shape = { sessionToken: 'string', user: USER }
const TEMPLATE: Shape = { name: 'string' }
const TEMPLATE_VERSION: Shape = { version: 'number', files: 'array' }
const BUILD: Shape = { id: 'string', status: 'string' }
const WORKSPACE: Shape = { name: 'string', status: 'string' }
const CREATE_WORKSPACE: Shape = { workspace: WORKSPACE, build: BUILD }
const API_TOKEN: Shape = { name: 'string' }
const NEW_API_TOKEN: Shape = { name: 'string', token: 'string' }
const AUDIT_ENTRY: Shape = { id: 'string', action: 'string' }
const CONNECT: Shape = { ticket: 'string', agent: 'object', relays: 'array' }
const AGENT_REGISTER: Shape = {
  ticketPublicKey: 'string',
  relays: 'array',
  heartbeatSeconds: 'number',
}
const LOG_LINE: Shape = { seq: 'number', text: 'string' }
const AGENT_LOG_LINE: Shape = { seq: 'number', text: 'string', stream: 'string' }
const BUILD_EVENT: Shape = { build: BUILD }

export class ApiClient {
  readonly url: string
  token: string | undefined

  constructor(init: ApiClientInit) {
    this.url = init.url.replace(/\/+$/, '')
    this.token = init.token
  }

  buildInfo(options?: RequestOptions): Promise<BuildInfo> {
    return this.json('GET', '/api/v1/buildinfo', undefined, BUILD_INFO, options)
  }

  firstUserStatus(options?: RequestOptions): Promise<FirstUserStatus> {
    return this.json('GET', '/api/v1/users/first', undefined, FIRST_USER, options)
  }

  createFirstUser(body: CreateFirstUserRequest, options?: RequestOptions): Promise<User> {
    return this.json('POST', '/api/v1/users/first', body, USER, options)
  }

  login(username: string, password: string, options?: RequestOptions): Promise<LoginResponse> {
    return this.json('POST', '/api/v1/users/login', { username, password }, LOGIN, options)
  }

  async logout(options?: RequestOptions): Promise<void> {
    await this.request('POST', '/api/v1/users/logout', undefined, options)
  }

  me(options?: RequestOptions): Promise<User> {
    return this.json('GET', '/api/v1/users/me', undefined, USER, options)
  }

  templates(options?: RequestOptions): Promise<Template[]> {
    return this.listAll('/api/v1/templates', {}, TEMPLATE, options)
  }

  pushTemplate(
    name: string,
    body: PushTemplateRequest,
    options?: RequestOptions,
  ): Promise<TemplateVersion> {
    return this.json('POST', templatePath(name, '/versions'), body, TEMPLATE_VERSION, options)
  }

  templateVersions(name: string, options?: RequestOptions): Promise<TemplateVersion[]> {
    return this.listAll(templatePath(name, '/versions'), {}, TEMPLATE_VERSION, options)
  }

  /** Your workspaces; `owner`'s, or everyone's with `all` (as a role allows). */
  workspaces(options?: RequestOptions & { owner?: string; all?: boolean }): Promise<Workspace[]> {
    const query = { owner: options?.owner, all: options?.all === true ? 'true' : undefined }
    return this.listAll('/api/v1/workspaces', query, WORKSPACE, options)
  }

  users(options?: RequestOptions): Promise<User[]> {
    return this.listAll('/api/v1/users', {}, USER, options)
  }

  user(name: string, options?: RequestOptions): Promise<User> {
    return this.json('GET', userPath(name), undefined, USER, options)
  }

  createUser(body: CreateUserRequest, options?: RequestOptions): Promise<User> {
    return this.json('POST', '/api/v1/users', body, USER, options)
  }

  setRoles(name: string, roles: Role[], options?: RequestOptions): Promise<User> {
    return this.json('PUT', userPath(name, '/roles'), { roles }, USER, options)
  }

  suspendUser(name: string, options?: RequestOptions): Promise<User> {
    return this.json('POST', userPath(name, '/suspend'), undefined, USER, options)
  }

  activateUser(name: string, options?: RequestOptions): Promise<User> {
    return this.json('POST', userPath(name, '/activate'), undefined, USER, options)
  }

  async deleteUser(name: string, options?: RequestOptions): Promise<void> {
    await this.request('DELETE', userPath(name), undefined, options)
  }

  /** `name` is a username, or `me` (then `oldPassword` is required). */
  async changePassword(
    name: string,
    body: ChangePasswordRequest,
    options?: RequestOptions,
  ): Promise<void> {
    await this.request('PUT', userPath(name, '/password'), body, options)
  }

  tokens(options?: RequestOptions): Promise<ApiToken[]> {
    return this.listAll('/api/v1/tokens', {}, API_TOKEN, options)
  }

  createToken(
    body: CreateApiTokenRequest,
    options?: RequestOptions,
  ): Promise<CreateApiTokenResponse> {
    return this.json('POST', '/api/v1/tokens', body, NEW_API_TOKEN, options)
  }

  async deleteToken(name: string, options?: RequestOptions): Promise<void> {
    assertName('token', name)
    await this.request('DELETE', `/api/v1/tokens/${seg(name)}`, undefined, options)
  }

  /** Audit entries, newest first, up to `filter.limit` (default 100). */
  audit(filter: AuditFilter = {}, options?: RequestOptions): Promise<AuditEntry[]> {
    const { limit = 100, ...query } = filter
    return this.listAll('/api/v1/audit', query, AUDIT_ENTRY, options, limit)
  }

  /** `ref` is a workspace name, or `OWNER/NAME` for another user's (the API's `?owner=`). */
  workspace(ref: string, options?: RequestOptions): Promise<Workspace> {
    return this.json('GET', workspacePath(ref), undefined, WORKSPACE, options)
  }

  createWorkspace(
    body: CreateWorkspaceRequest,
    options?: RequestOptions,
  ): Promise<CreateWorkspaceResponse> {
    return this.json('POST', '/api/v1/workspaces', body, CREATE_WORKSPACE, options)
  }

  /** `ref` is a workspace name, or `OWNER/NAME`. */
  createBuild(ref: string, transition: Transition, options?: RequestOptions): Promise<Build> {
    return this.json('POST', workspacePath(ref, '/builds'), { transition }, BUILD, options)
  }

  build(id: string, options?: RequestOptions): Promise<Build> {
    return this.json('GET', `/api/v1/builds/${idSeg(id)}`, undefined, BUILD, options)
  }

  /** `ref` is a workspace name, or `OWNER/NAME`. */
  connect(ref: string, peerId: string, options?: RequestOptions): Promise<ConnectResponse> {
    return this.json('POST', workspacePath(ref, '/connect'), { peerId }, CONNECT, options)
  }

  registerAgent(
    body: AgentRegisterRequest,
    options?: RequestOptions,
  ): Promise<AgentRegisterResponse> {
    return this.json('POST', '/api/v1/agent/register', body, AGENT_REGISTER, options)
  }

  /** The agent's startup script, once its start build has succeeded (agent token). */
  agentStartup(options?: RequestOptions): Promise<AgentStartupResponse> {
    return this.json('GET', '/api/v1/agent/startup', undefined, { ready: 'boolean' }, options)
  }

  /** The agent's lifecycle state, stats and listening ports (agent token). */
  async reportAgent(body: AgentReportRequest, options?: RequestOptions): Promise<void> {
    await this.request('POST', '/api/v1/agent/report', body, options)
  }

  /** Lines of the agent's log (agent token). */
  appendAgentLogs(body: AgentLogsRequest, options?: RequestOptions): Promise<{ stored: number }> {
    return this.json('POST', '/api/v1/agent/logs', body, { stored: 'number' }, options)
  }

  /**
   * A workspace's agent log: the lines so far, then, with `follow`, new
   * lines until the caller stops or the connection ends. `ref` is a
   * workspace name, or `OWNER/NAME`.
   */
  async *agentLogs(
    ref: string,
    options: RequestOptions & { follow?: boolean } = {},
  ): AsyncGenerator<AgentLogLine> {
    const path = workspacePath(ref, '/agent/logs') + (options.follow === true ? '?follow=true' : '')
    for await (const value of this.ndjson(path, options)) {
      if (isRecord(value) && value.type === 'log' && matches(value, AGENT_LOG_LINE)) {
        yield value as AgentLogLine
        continue
      }
      throw new MeshError(
        'MESH_NOT_A_COORDINATOR',
        `${this.url} does not look like a coder-mesh server (its agent log holds lines a coordinator never sends).`,
      )
    }
  }

  /**
   * Parsed lines of an NDJSON answer, as they arrive; `parse` turns a line
   * into a value (by default JSON.parse, a bad line meaning the URL is no
   * coordinator). A cut connection is MESH_SERVER_UNREACHABLE.
   */
  private async *ndjson<T = unknown>(
    path: string,
    options?: RequestOptions,
    parse?: (res: Response, line: string) => T,
  ): AsyncGenerator<T> {
    const res = await this.request('GET', path, undefined, { signal: options?.signal })
    if (res.body === null) return
    const parseLine =
      parse ??
      ((_: Response, line: string): T => {
        try {
          return JSON.parse(line) as T
        } catch {
          throw this.notCoordinator(res, 'its answer is not NDJSON')
        }
      })

    const decoder = new TextDecoder()
    let pending = ''
    const reader = res.body[Symbol.asyncIterator]()
    try {
      for (;;) {
        let next: IteratorResult<Uint8Array>
        try {
          next = await reader.next()
        } catch (err) {
          if (options?.signal?.aborted === true) throw err
          throw this.cut(err)
        }
        if (next.done === true) break
        pending += decoder.decode(next.value, { stream: true })
        let newline = pending.indexOf('\n')
        while (newline !== -1) {
          const line = pending.slice(0, newline)
          pending = pending.slice(newline + 1)
          if (line.trim() !== '') yield parseLine(res, line)
          newline = pending.indexOf('\n')
        }
      }
      pending += decoder.decode()
      if (pending.trim() !== '') yield parseLine(res, pending)
    } finally {
      // Left early (the caller stopped, or a bad line): let the connection go.
      try {
        await reader.return?.()
      } catch {
        // The stream had already failed.
      }
    }
  }

  /**
   * The build's log as it happens: yields every line so far, then new lines
   * until the build ends, and last a `build` event with its final state.
   * A cut connection is MESH_SERVER_UNREACHABLE; the stream may also end
   * without a `build` event when the coordinator shuts down.
   */
  followBuildLogs(id: string, options?: RequestOptions): AsyncGenerator<BuildLogEvent> {
    const path = `/api/v1/builds/${idSeg(id)}/logs?follow=true`
    return this.ndjson(path, options, (res, line) => this.logEvent(res, line))
  }

  private logEvent(res: Response, line: string): BuildLogEvent {
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      throw this.notCoordinator(res, 'its build log is not NDJSON')
    }
    if (isRecord(value)) {
      if (value.type === 'log' && matches(value, LOG_LINE)) return value as BuildLogEvent
      if (value.type === 'build' && matches(value, BUILD_EVENT)) return value as BuildLogEvent
    }
    throw this.notCoordinator(res, 'its build log holds events a coordinator never sends')
  }

  /**
   * Every item of a listing, page by page (following X-Next-Offset), up to
   * `max`. A server that does not paginate answers everything at once.
   */
  private async listAll<T>(
    path: string,
    query: Record<string, string | undefined>,
    item: Shape,
    options?: RequestOptions,
    max = Infinity,
  ): Promise<T[]> {
    const out: T[] = []
    let offset = 0
    for (;;) {
      const params = new URLSearchParams()
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined) params.set(key, value)
      }
      params.set('limit', String(Math.min(PAGE_SIZE, max - out.length)))
      if (offset > 0) params.set('offset', String(offset))
      const res = await this.request('GET', `${path}?${params}`, undefined, options)
      const page = await this.readJson(res, options)
      if (!Array.isArray(page) || !page.every((value) => matches(value, item))) {
        throw this.notCoordinator(res, 'not the listing a coordinator sends')
      }
      out.push(...(page as T[]))
      const next = Number(res.headers.get('x-next-offset') ?? NaN)
      if (!Number.isInteger(next) || next <= offset || page.length === 0 || out.length >= max) {
        return out.slice(0, max)
      }
      offset = next
    }
  }

  private async json<T>(
    method: string,
    path: string,
    body: unknown,
    shape: Shape,
    options?: RequestOptions,
  ): Promise<T> {
    const res = await this.request(method, path, body, options)
    const value = await this.readJson(res, options)
    if (!matches(value, shape)) {
      throw this.notCoordinator(res, 'without the fields a coordinator sends')
    }
    return value as T
  }

  /** The answer's body as JSON; MESH_NOT_A_COORDINATOR when it is not JSON. */
  private async readJson(res: Response, options?: RequestOptions): Promise<unknown> {
    let text: string
    try {
      text = await res.text()
    } catch (err) {
      if (options?.signal?.aborted === true) throw err
      throw this.cut(err)
    }
    try {
      return JSON.parse(text) as unknown
    } catch {
      throw this.notCoordinator(res, 'not JSON')
    }
  }

  private async request(
    method: string,
    path: string,
    body: unknown,
    options?: RequestOptions,
  ): Promise<Response> {
    const target = this.target(path)
    const headers: Record<string, string> = { accept: 'application/json' }
    if (this.token !== undefined) {
      const problem = tokenProblem(this.token)
      if (problem !== undefined) {
        throw new MeshError('MESH_BAD_ARGUMENT', `The token is malformed: it ${problem}.`)
      }
      headers.authorization = `Bearer ${this.token}`
    }
    if (body !== undefined) headers['content-type'] = 'application/json'

    let res: Response
    try {
      res = await fetch(target, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: options?.signal,
      })
    } catch (err) {
      if (options?.signal?.aborted === true) throw err
      throw this.unreachable(err)
    }

    if (res.ok) return res
    throw await this.errorFromResponse(res, options)
  }

  /** The full URL for `path`; MESH_BAD_ARGUMENT naming the base URL when it is not one. */
  private target(path: string): string {
    const problem = urlProblem(this.url)
    if (problem !== undefined) {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `The coordinator URL ${JSON.stringify(this.url)} ${problem}.`,
      )
    }
    return this.url + path
  }

  private unreachable(err: unknown): MeshError {
    const code = causeCode(err)
    if (code?.startsWith('HPE_') === true) {
      return new MeshError(
        'MESH_NOT_A_COORDINATOR',
        `${this.url} does not look like a coder-mesh server (it did not answer in HTTP).`,
        { detail: describeFetchError(err), cause: err },
      )
    }
    const why = UNREACHABLE_REASONS[code ?? ''] ?? 'is it running?'
    return new MeshError(
      'MESH_SERVER_UNREACHABLE',
      `Cannot reach the coordinator at ${this.url}: ${why}`,
      {
        detail: describeFetchError(err),
        cause: err,
      },
    )
  }

  private cut(err: unknown): MeshError {
    return new MeshError(
      'MESH_SERVER_UNREACHABLE',
      `Lost the connection to the coordinator at ${this.url}.`,
      { detail: describeFetchError(err), cause: err },
    )
  }

  /** MESH_NOT_A_COORDINATOR: what answered, never the body itself. */
  private notCoordinator(res: Response, why?: string): MeshError {
    const type = (res.headers.get('content-type') ?? '').split(';')[0]?.trim() || 'no content type'
    const answered = `it answered ${res.status} ${type}${why === undefined ? '' : `, ${why}`}`
    return new MeshError(
      'MESH_NOT_A_COORDINATOR',
      `${this.url} does not look like a coder-mesh server (${answered}).`,
      { detail: `${res.url === '' ? this.url : res.url} answered ${res.status} ${res.statusText}` },
    )
  }

  private async errorFromResponse(res: Response, options?: RequestOptions): Promise<MeshError> {
    let text = ''
    try {
      text = await res.text()
    } catch (err) {
      if (options?.signal?.aborted === true) throw err
    }
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      // Not JSON: not our envelope.
    }
    if (isRecord(body) && typeof body.code === 'string' && typeof body.message === 'string') {
      const init = {
        detail: typeof body.detail === 'string' ? body.detail : undefined,
        validations: Array.isArray(body.validations) ? body.validations : undefined,
        retryAfterSeconds:
          typeof body.retryAfterSeconds === 'number' ? body.retryAfterSeconds : undefined,
      }
      if (isErrorCode(body.code)) return new MeshError(body.code, body.message, init)
      if (body.code.startsWith('MESH_')) {
        // A newer coordinator's code: keep its message, say which code it was.
        return new MeshError('MESH_INTERNAL', body.message, {
          ...init,
          detail: `code ${body.code}${init.detail === undefined ? '' : `: ${init.detail}`}`,
        })
      }
    }
    if (res.status === 502 || res.status === 503 || res.status === 504) {
      // A proxy in front of the coordinator answering for it: the coordinator is away.
      return new MeshError(
        'MESH_SERVER_UNREACHABLE',
        `Cannot reach the coordinator at ${this.url}: it answered ${res.status} ${res.statusText}` +
          ' (a proxy in front of it may have lost it).',
      )
    }
    return this.notCoordinator(res)
  }
}

/** Whether a MeshError means the coordinator was away, so asking again later may work. */
export function isUnreachable(err: unknown): boolean {
  return (
    isMeshError(err) && (err.code === 'MESH_SERVER_UNREACHABLE' || err.code === 'MESH_UNAVAILABLE')
  )
}

/** Why `url` cannot be a coordinator's base URL (e.g. "is not a URL"), or undefined. */
export function urlProblem(url: string): string | undefined {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return /\s/.test(url) ? 'is not a URL: it holds a space or a line break' : 'is not a URL'
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return `is not an http:// or https:// URL`
  }
  if (parsed.search !== '' || parsed.hash !== '') return 'must not have a ?query or #fragment'
  return undefined
}

/**
 * Why `token` cannot be a token (e.g. "holds a line break"), or undefined.
 * Tokens are printable ASCII without spaces; the text never repeats the token.
 */
export function tokenProblem(token: string): string | undefined {
  if (token === '') return 'is empty'
  if (/[\r\n]/.test(token)) return 'holds a line break'
  if (/\s/.test(token)) return 'holds a space or a tab'
  if (/\p{Cc}/u.test(token)) return 'holds a control character'
  if (/[^\x21-\x7e]/.test(token)) return 'holds a character outside ASCII'
  return undefined
}

const UNREACHABLE_REASONS: Partial<Record<string, string>> = {
  ECONNREFUSED: 'nothing listens there; is it running?',
  ENOTFOUND: 'its host name does not resolve.',
  EAI_AGAIN: 'its host name could not be resolved (DNS failed); try again.',
  EHOSTUNREACH: 'its host is unreachable from here.',
  ENETUNREACH: 'its network is unreachable from here.',
  ETIMEDOUT: 'the connection timed out.',
  UND_ERR_CONNECT_TIMEOUT: 'the connection timed out.',
  ECONNRESET: 'it closed the connection; is it running?',
  UND_ERR_SOCKET: 'it closed the connection; is it running?',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'its TLS certificate is self-signed and not trusted here.',
  SELF_SIGNED_CERT_IN_CHAIN: 'its TLS certificate is not trusted here.',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'its TLS certificate is not trusted here.',
  CERT_HAS_EXPIRED: 'its TLS certificate has expired.',
  ERR_TLS_CERT_ALTNAME_INVALID: 'its TLS certificate is for another host name.',
  EPROTO: 'TLS failed; is it https:// at all?',
}

function templatePath(name: string, suffix = ''): string {
  assertName('template', name)
  return `/api/v1/templates/${seg(name)}${suffix}`
}

function userPath(name: string, suffix = ''): string {
  assertName('user', name)
  return `/api/v1/users/${seg(name)}${suffix}`
}

function workspacePath(ref: string, suffix = ''): string {
  const { owner, name } = parseWorkspaceRef(ref)
  const query = owner === undefined ? '' : `?owner=${encodeURIComponent(owner)}`
  return `/api/v1/workspaces/${seg(name)}${suffix}${query}`
}

/** A server-made id in a path: never empty, `.` or `..` (URL parsing would drop or climb them). */
function idSeg(id: string): string {
  if (id === '' || id === '.' || id === '..') {
    throw new MeshError('MESH_BAD_ARGUMENT', `Invalid id ${JSON.stringify(id)}.`)
  }
  return seg(id)
}

function seg(value: string): string {
  return encodeURIComponent(value)
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function matches(value: unknown, shape: Shape): boolean {
  if (!isRecord(value)) return false
  for (const [field, kind] of Object.entries(shape)) {
    const v = value[field]
    if (typeof kind === 'object') {
      if (!matches(v, kind)) return false
    } else if (kind === 'array') {
      if (!Array.isArray(v)) return false
    } else if (kind === 'object') {
      if (!isRecord(v)) return false
    } else if (typeof v !== kind) {
      return false
    }
  }
  return true
}

function causeCode(err: unknown): string | undefined {
  let current: unknown = err
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    const code = (current as NodeJS.ErrnoException).code
    if (typeof code === 'string' && code !== '') return code
    current = current.cause
  }
  return undefined
}

function describeFetchError(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  return `${err.message}${cause}`
}
