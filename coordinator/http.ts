/**
 * Request plumbing shared by the route modules: the Hono env type, reading
 * a JSON body through a zod schema, and bearer-token authentication.
 */
import type { Context, MiddlewareHandler } from 'hono'
import type { z } from 'zod'
import { MeshError, type Validation } from '../sdk/errors.ts'
import type { UserRecord } from './records.ts'
import { unauthenticated, type Users } from './users.ts'

export interface AppEnv {
  Variables: {
    requestId: string
    /** Set by requireSession. */
    user: UserRecord
    /** The bearer token of the request, set by requireSession. */
    token: string
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

/** Admits requests that carry a live session token; sets `user` and `token`. */
export function requireSession(users: Users): MiddlewareHandler<AppEnv> {
  return async function requireSession(c, next) {
    const token = bearerToken(c)
    c.set('user', await users.authenticate(token))
    c.set('token', token)
    await next()
  }
}
