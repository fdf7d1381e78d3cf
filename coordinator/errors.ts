/**
 * The one place HTTP errors are shaped: every failure leaves as an
 * ErrorEnvelope with the status its code maps to. Internal errors are
 * logged with the request id and answered with a generic message, never
 * with their text or stack.
 */
import type { ErrorHandler, NotFoundHandler } from 'hono'
import { HTTPException } from 'hono/http-exception'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { z } from 'zod'
import { isMeshError, MeshError, type ErrorCode } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import type { AppEnv } from './http.ts'
import { validationError } from './http.ts'

const CODE_FOR_STATUS: Record<number, ErrorCode> = {
  400: 'MESH_BAD_REQUEST',
  401: 'MESH_UNAUTHENTICATED',
  403: 'MESH_FORBIDDEN',
  404: 'MESH_NOT_FOUND',
  413: 'MESH_BODY_TOO_LARGE',
  415: 'MESH_UNSUPPORTED_MEDIA_TYPE',
}

/** Maps any thrown value to a MeshError the client may see. */
export function toMeshError(err: unknown): MeshError | undefined {
  if (isMeshError(err)) return err
  if (err instanceof z.ZodError) return validationError(err)
  if (err instanceof HTTPException) {
    const code = CODE_FOR_STATUS[err.status]
    if (code !== undefined) return new MeshError(code, err.message || 'The request was refused.')
  }
  return undefined
}

export function onError(log: Logger): ErrorHandler<AppEnv> {
  return function onError(err, c) {
    const requestId = c.get('requestId') ?? 'unknown'
    let meshError = toMeshError(err)
    if (meshError === undefined) {
      log.error({ err, request_id: requestId }, 'request failed')
      meshError = new MeshError(
        'MESH_INTERNAL',
        'The coordinator hit an internal error. Try again; if it persists, report the request id.',
        { detail: `request id ${requestId}` },
      )
    }
    const status = meshError.status as ContentfulStatusCode
    if (meshError.retryAfterSeconds !== undefined) {
      c.header('retry-after', String(meshError.retryAfterSeconds))
    }
    return c.json(meshError.toJSON(), status)
  }
}

export const notFound: NotFoundHandler<AppEnv> = function notFound(c) {
  const error = new MeshError('MESH_NOT_FOUND', `No route for ${c.req.method} ${c.req.path}.`)
  return c.json(error.toJSON(), 404)
}
