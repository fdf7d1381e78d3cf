/**
 * The route table's machinery. Every route is one RouteSpec: method, path,
 * who may call it (auth kind and rbac action), its request and response
 * schemas, and whether it is audited. `registerRoutes` mounts each spec
 * behind the same steps, and openapi.ts documents the same list, so a
 * route cannot be served without being documented or checked:
 *
 *   authenticate → authorize (rbac.ts) → validate query and body →
 *   handler → JSON answer → audit entry (success or failure)
 */
import type { Hono } from 'hono'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import type { z } from 'zod'
import { isMeshError } from '../sdk/errors.ts'
import type { Audit } from './audit.ts'
import { toMeshError } from './errors.ts'
import {
  bearerToken,
  clientAddress,
  readJson,
  readQuery,
  type AppContext,
  type AppEnv,
} from './http.ts'
import { authorize, type Action } from './rbac.ts'
import type { Users } from './users.ts'

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE'

/**
 * - `none`: anyone (probes, login, first-user setup)
 * - `session`: a session or API token of an active user, holding `action`
 * - `agent`: a workspace agent token, checked by the handler
 */
export type AuthKind = 'none' | 'session' | 'agent'

type Schema = z.ZodType | undefined
type In<S extends Schema> = S extends z.ZodType ? z.output<S> : undefined
type Out<S extends Schema> = S extends z.ZodType ? z.output<S> : never

export interface RouteInput<B extends Schema, Q extends Schema> {
  body: In<B>
  query: In<Q>
}

export interface RouteSpec<B extends Schema, Q extends Schema, R extends Schema> {
  method: HttpMethod
  /** Hono pattern, e.g. `/api/v1/users/:name`. */
  path: string
  operationId: string
  summary: string
  tag: string
  auth: AuthKind
  /** The permission a `session` caller needs. */
  action?: Action
  /**
   * The permission needed as well when the route acts on another user's
   * things: when `subject` names someone other than the caller.
   */
  anyAction?: Action
  /** Whose things the request acts on; default: the `?owner=` query. */
  subject?: (c: AppContext) => string | undefined
  body?: B
  query?: Q
  /** The JSON answer's schema; absent for routes that answer otherwise. */
  response?: R
  /** Content type of a route that does not answer JSON (text, NDJSON, 204). */
  produces?: string
  /** Status of a success; default 200. */
  status?: 200 | 201 | 204
  /** Listing: takes `limit` and `offset`, sets the next-page headers. */
  paginated?: boolean
  /** The audit action: set on every route that changes something. */
  audit?: string
  /** What the audit entry names as the target; `body` is undefined if it did not validate. */
  target?: (c: AppContext, body: In<B> | undefined) => string
  handler: (c: AppContext, input: RouteInput<B, Q>) => Promise<Out<R> | Response>
}

/** A route of any schemas, as the table holds them. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyRoute = RouteSpec<any, any, any>

/** Declares a route, inferring the handler's input and output types from the schemas. */
export function route<
  B extends Schema = undefined,
  Q extends Schema = undefined,
  R extends Schema = undefined,
>(spec: RouteSpec<B, Q, R>): AnyRoute {
  if (spec.auth === 'session' && spec.action === undefined) {
    throw new TypeError(`route ${spec.method} ${spec.path}: session routes need an action`)
  }
  return spec as AnyRoute
}

export interface RouteComponents {
  users: Users
  audit: Audit
}

const MAX_TARGET_CHARS = 200

function clip(text: string): string {
  return text.length > MAX_TARGET_CHARS ? text.slice(0, MAX_TARGET_CHARS) + '…' : text
}

/** Mounts every route of the table on `app`. */
export function registerRoutes(
  app: Hono<AppEnv>,
  routes: readonly AnyRoute[],
  components: RouteComponents,
): void {
  const { users, audit } = components

  for (const spec of routes) {
    app.on(spec.method, spec.path, async function handle(c) {
      c.set('route', spec.path)
      let body: unknown
      try {
        if (spec.auth === 'session') {
          const token = bearerToken(c)
          const user = await users.authenticate(token)
          c.set('user', user)
          c.set('token', token)
          authorize(user.roles, spec.action!)
          if (spec.anyAction !== undefined) {
            const subject = spec.subject?.(c) ?? c.req.query('owner')
            if (subject !== undefined && subject !== user.username) {
              authorize(user.roles, spec.anyAction)
            }
          }
        }

        // An agent without a token learns that before anything about its body.
        if (spec.auth === 'agent') bearerToken(c)
        const query = spec.query === undefined ? undefined : readQuery(c, spec.query)
        body = spec.body === undefined ? undefined : await readJson(c, spec.body)
        const result: unknown = await spec.handler(c, { body, query })
        const res =
          result instanceof Response
            ? result
            : c.json(result, (spec.status ?? 200) as ContentfulStatusCode)
        if (spec.audit !== undefined) await record(spec, c, body, res.status)
        return res
      } catch (err) {
        if (spec.audit !== undefined) {
          // Only failures by someone known: anonymous noise on a guarded
          // route would flood the log without telling anything.
          const known = c.get('user') !== undefined || c.get('auditActor') !== undefined
          if (known) await record(spec, c, body, toMeshError(err)?.status ?? 500, err)
        }
        throw err
      }
    })
  }

  async function record(
    spec: AnyRoute,
    c: AppContext,
    body: unknown,
    status: number,
    err?: unknown,
  ): Promise<void> {
    const user = c.get('user') as AppContext['var']['user'] | undefined
    const tried = c.get('auditActor') as string | undefined
    let target: string
    try {
      target = spec.target?.(c, body) ?? Object.values(c.req.param()).join('/')
    } catch {
      target = 'unknown'
    }
    const entry = {
      actor: user?.username ?? (tried === undefined ? null : clip(tried)),
      action: spec.audit!,
      target: clip(target),
      address: clientAddress(c),
      result: err === undefined ? ('success' as const) : ('failure' as const),
      status,
      code: err === undefined ? undefined : isMeshError(err) ? err.code : 'MESH_INTERNAL',
      requestId: c.get('requestId'),
    }
    if (entry.code === undefined) delete entry.code
    try {
      await audit.append(entry)
    } catch (auditErr) {
      // A success that cannot be audited must not be acknowledged.
      if (err === undefined) throw auditErr
    }
  }
}

/** OpenAPI-style path: `/users/:name` → `/users/{name}`. */
export function openApiPath(path: string): string {
  return path.replace(/:([A-Za-z_]\w*)/g, '{$1}')
}

/** The names of a pattern's path parameters. */
export function pathParams(path: string): string[] {
  return [...path.matchAll(/:([A-Za-z_]\w*)/g)].map((m) => m[1]!)
}
