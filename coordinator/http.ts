/**
 * Request plumbing shared by the route modules: the Hono env type, reading
 * a JSON body or a query through a zod schema, bearer tokens, the client's
 * address, and page headers of listings.
 */
import type { Context } from 'hono'
import type { IncomingMessage } from 'node:http'
import type { z } from 'zod'
import type { ListQuery } from '../sdk/api-types.ts'
import { MeshError, type Validation } from '../sdk/errors.ts'
import type { UserRecord } from './records.ts'
import { unauthenticated } from './users.ts'

export interface AppEnv {
  /** What @hono/node-server passes along; absent under app.request() in tests. */
  Bindings: { incoming?: IncomingMessage }
  Variables: {
    requestId: string
    /** The authenticated caller, set for routes with session auth. */
    user: UserRecord
    /** The bearer token of the request, set with `user`. */
    token: string
    /** The matched route pattern, for metrics and logs. */
    route: string
    /** Who the audit entry names when no one is logged in (a login's username). */
    auditActor: string
  }
}

export type AppContext = Context<AppEnv>

/** Turns zod issues into the envelope's validations. */
export function validationError(error: z.core.$ZodError): MeshError {
  const validations: Validation[] = error.issues.map((issue) => ({
    field: issue.path.length === 0 ? '(body)' : issue.path.map(String).join('.'),
    detail: issue.message,
  }))
  const first = validations[0]
  const summary = first === undefined ? '' : `: ${first.field}: ${first.detail}`
  return new MeshError('MESH_VALIDATION', `The request is invalid${summary}.`, { validations })
}

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i

/**
 * The request body, parsed as JSON and validated: 415 when it is not sent
 * as JSON, 400 MESH_BAD_REQUEST when it does not parse, 400 MESH_VALIDATION
 * when it does not match `schema`.
 */
export async function readJson<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  const type = c.req.header('content-type') ?? ''
  if (!JSON_TYPE.test(type)) {
    throw new MeshError(
      'MESH_UNSUPPORTED_MEDIA_TYPE',
      'Send the request body as JSON (Content-Type: application/json).',
      { detail: type === '' ? 'no content type' : `content type ${type}` },
    )
  }

  const text = await c.req.text()
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new MeshError('MESH_BAD_REQUEST', 'The request body is not valid JSON.', {
      detail: (err as Error).message,
    })
  }

  const result = schema.safeParse(raw)
  if (!result.success) throw validationError(result.error)
  return result.data
}

/** The token from `Authorization: Bearer <token>`; MESH_UNAUTHENTICATED when there is none. */
export function bearerToken(c: Context): string {
  const header = c.req.header('authorization')
  if (header === undefined) throw unauthenticated('no Authorization header')
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
  if (match === null) throw unauthenticated('the Authorization header is not a Bearer token')
  return match[1]!
}

/** The query string, validated: 400 MESH_VALIDATION when it does not match `schema`. */
export function readQuery<S extends z.ZodType>(c: Context, schema: S): z.output<S> {
  const result = schema.safeParse(c.req.query())
  if (!result.success) throw validationError(result.error)
  return result.data
}

/**
 * The client's address as the socket saw it. Forwarding headers are not
 * trusted: anyone can send them.
 */
export function clientAddress(c: Context<AppEnv>): string {
  return c.env?.incoming?.socket?.remoteAddress ?? 'unknown'
}

/** Sets X-Next-Offset and a `Link: <…>; rel="next"` header when more items follow. */
export function setNextPage(c: Context, page: ListQuery, more: boolean): void {
  if (!more) return
  const next = page.offset + page.limit
  const url = new URL(c.req.url)
  url.searchParams.set('offset', String(next))
  url.searchParams.set('limit', String(page.limit))
  c.header('x-next-offset', String(next))
  c.header('link', `<${url.pathname}${url.search}>; rel="next"`)
}

/** One page of an in-memory list, with its page headers set. */
export function slicePage<T>(c: Context, page: ListQuery, items: T[]): T[] {
  setNextPage(c, page, items.length > page.offset + page.limit)
  return items.slice(page.offset, page.offset + page.limit)
}
