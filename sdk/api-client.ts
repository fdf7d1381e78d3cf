/**
 * A typed client for the coordinator's `/api/v1`, used by the CLI and the
 * agent. Failures become MeshErrors carrying the server's code; a server
 * that cannot be reached is MESH_SERVER_UNREACHABLE.
 */
import { isErrorCode, MeshError } from './errors.ts'
import type {
  AgentRegisterRequest,
  AgentRegisterResponse,
  Build,
  BuildInfo,
  BuildLogEvent,
  ConnectResponse,
  CreateFirstUserRequest,
  CreateWorkspaceRequest,
  CreateWorkspaceResponse,
  FirstUserStatus,
  LoginResponse,
  PushTemplateRequest,
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

export class ApiClient {
  readonly url: string
  token: string | undefined

  constructor(init: ApiClientInit) {
    this.url = init.url.replace(/\/+$/, '')
    this.token = init.token
  }

  buildInfo(options?: RequestOptions): Promise<BuildInfo> {
    return this.json('GET', '/api/v1/buildinfo', undefined, options)
  }

  firstUserStatus(options?: RequestOptions): Promise<FirstUserStatus> {
    return this.json('GET', '/api/v1/users/first', undefined, options)
  }

  createFirstUser(body: CreateFirstUserRequest, options?: RequestOptions): Promise<User> {
    return this.json('POST', '/api/v1/users/first', body, options)
  }

  login(username: string, password: string, options?: RequestOptions): Promise<LoginResponse> {
    return this.json('POST', '/api/v1/users/login', { username, password }, options)
  }

  async logout(options?: RequestOptions): Promise<void> {
    await this.request('POST', '/api/v1/users/logout', undefined, options)
  }

  me(options?: RequestOptions): Promise<User> {
    return this.json('GET', '/api/v1/users/me', undefined, options)
  }

  templates(options?: RequestOptions): Promise<Template[]> {
    return this.json('GET', '/api/v1/templates', undefined, options)
  }

  pushTemplate(
    name: string,
    body: PushTemplateRequest,
    options?: RequestOptions,
  ): Promise<TemplateVersion> {
    return this.json('POST', `/api/v1/templates/${seg(name)}/versions`, body, options)
  }

  templateVersions(name: string, options?: RequestOptions): Promise<TemplateVersion[]> {
    return this.json('GET', `/api/v1/templates/${seg(name)}/versions`, undefined, options)
  }

  workspaces(options?: RequestOptions): Promise<Workspace[]> {
    return this.json('GET', '/api/v1/workspaces', undefined, options)
  }

  workspace(name: string, options?: RequestOptions): Promise<Workspace> {
    return this.json('GET', `/api/v1/workspaces/${seg(name)}`, undefined, options)
  }

  createWorkspace(
    body: CreateWorkspaceRequest,
    options?: RequestOptions,
  ): Promise<CreateWorkspaceResponse> {
    return this.json('POST', '/api/v1/workspaces', body, options)
  }

  createBuild(name: string, transition: Transition, options?: RequestOptions): Promise<Build> {
    return this.json('POST', `/api/v1/workspaces/${seg(name)}/builds`, { transition }, options)
  }

  build(id: string, options?: RequestOptions): Promise<Build> {
    return this.json('GET', `/api/v1/builds/${seg(id)}`, undefined, options)
  }

  connect(name: string, peerId: string, options?: RequestOptions): Promise<ConnectResponse> {
    return this.json('POST', `/api/v1/workspaces/${seg(name)}/connect`, { peerId }, options)
  }

  registerAgent(
    body: AgentRegisterRequest,
    options?: RequestOptions,
  ): Promise<AgentRegisterResponse> {
    return this.json('POST', '/api/v1/agent/register', body, options)
  }

  /**
   * The build's log as it happens: yields every line so far, then new lines
   * until the build ends, and last a `build` event with its final state.
   */
  async *followBuildLogs(id: string, options?: RequestOptions): AsyncGenerator<BuildLogEvent> {
    const res = await this.request('GET', `/api/v1/builds/${seg(id)}/logs?follow=true`, undefined, {
      signal: options?.signal,
    })
    if (res.body === null) return

    const decoder = new TextDecoder()
    let pending = ''
    for await (const chunk of res.body) {
      pending += decoder.decode(chunk, { stream: true })
      let newline = pending.indexOf('\n')
      while (newline !== -1) {
        const line = pending.slice(0, newline)
        pending = pending.slice(newline + 1)
        if (line.trim() !== '') yield JSON.parse(line) as BuildLogEvent
        newline = pending.indexOf('\n')
      }
    }
    if (pending.trim() !== '') yield JSON.parse(pending) as BuildLogEvent
  }

  private async json<T>(
    method: string,
    path: string,
    body: unknown,
    options?: RequestOptions,
  ): Promise<T> {
    const res = await this.request(method, path, body, options)
    return (await res.json()) as T
  }

  private async request(
    method: string,
    path: string,
    body: unknown,
    options?: RequestOptions,
  ): Promise<Response> {
    const headers: Record<string, string> = { accept: 'application/json' }
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`
    if (body !== undefined) headers['content-type'] = 'application/json'

    let res: Response
    try {
      res = await fetch(this.url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: options?.signal,
      })
    } catch (err) {
      if (options?.signal?.aborted === true) throw err
      throw new MeshError(
        'MESH_SERVER_UNREACHABLE',
        `Cannot reach the coordinator at ${this.url}: is it running?`,
        { detail: describeFetchError(err), cause: err },
      )
    }

    if (res.ok) return res
    throw await errorFromResponse(res)
  }
}

function seg(value: string): string {
  return encodeURIComponent(value)
}

function describeFetchError(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  return `${err.message}${cause}`
}

async function errorFromResponse(res: Response): Promise<MeshError> {
  const text = await res.text()
  try {
    const body = JSON.parse(text) as Record<string, unknown>
    if (isErrorCode(body.code) && typeof body.message === 'string') {
      return new MeshError(body.code, body.message, {
        detail: typeof body.detail === 'string' ? body.detail : undefined,
        validations: Array.isArray(body.validations) ? body.validations : undefined,
      })
    }
  } catch {
    // Not our envelope: fall through to a generic error below.
  }
  return new MeshError(
    'MESH_INTERNAL',
    `The coordinator answered ${res.status} ${res.statusText}.`,
    {
      detail: text.slice(0, 200),
    },
  )
}
