/** Probes, build info, metrics, the OpenAPI document and the audit log. */
import { z } from 'zod'
import pkg from '../package.json' with { type: 'json' }
import { AuditEntry, AuditQuery, BuildInfo } from '../sdk/api-types.ts'
import { MeshError } from '../sdk/errors.ts'
import type { Coordinator } from './coordinator.ts'
import { setNextPage } from './http.ts'
import { openApiDocument } from './openapi.ts'
import { route, type AnyRoute } from './routes.ts'

const SYSTEM = 'System'

/** `table` is the whole route table, this module's routes included, for the document. */
export function systemRoutes(
  coordinator: Coordinator,
  table: () => readonly AnyRoute[],
): AnyRoute[] {
  const { audit, metrics } = coordinator
  let document: unknown

  return [
    route({
      method: 'GET',
      path: '/healthz',
      operationId: 'healthz',
      summary: 'Liveness: answers "ok" while the process serves HTTP',
      tag: SYSTEM,
      auth: 'none',
      produces: 'text/plain',
      handler: async (c) => c.text('ok'),
    }),

    route({
      method: 'GET',
      path: '/readyz',
      operationId: 'readyz',
      summary: 'Readiness: "ok" while the store is open and the relay runs; 503 otherwise',
      tag: SYSTEM,
      auth: 'none',
      produces: 'text/plain',
      handler: async (c) => {
        const problem = coordinator.notReady()
        if (problem !== undefined) {
          throw new MeshError('MESH_UNAVAILABLE', 'The coordinator is not ready.', {
            detail: problem,
          })
        }
        return c.text('ok')
      },
    }),

    route({
      method: 'GET',
      path: '/metrics',
      operationId: 'metrics',
      summary: 'Prometheus metrics, in the text exposition format',
      tag: SYSTEM,
      auth: 'none',
      produces: 'text/plain; version=0.0.4',
      handler: async (c) => {
        c.header('content-type', metrics.contentType)
        return c.body(await metrics.render())
      },
    }),

    route({
      method: 'GET',
      path: '/api/v1/buildinfo',
      operationId: 'getBuildInfo',
      summary: 'The coordinator version',
      tag: SYSTEM,
      auth: 'none',
      response: BuildInfo,
      handler: async () => ({ version: pkg.version }),
    }),

    route({
      method: 'GET',
      path: '/api/v1/openapi.json',
      operationId: 'getOpenApi',
      summary: 'This API, as an OpenAPI 3.1 document generated from the route table',
      tag: SYSTEM,
      auth: 'none',
      produces: 'application/json',
      handler: async (c) => {
        document ??= openApiDocument(table(), pkg.version)
        return c.json(document as object)
      },
    }),

    route({
      method: 'GET',
      path: '/api/v1/audit',
      operationId: 'listAuditLog',
      summary: 'The audit log, newest first',
      tag: SYSTEM,
      auth: 'session',
      action: 'audit:read',
      query: AuditQuery,
      paginated: true,
      response: z.array(AuditEntry),
      handler: async (c, { query }) => {
        const { items, more } = await audit.list(query)
        setNextPage(c, query, more)
        return items
      },
    }),
  ]
}
