/**
 * The OpenAPI 3.1 document, generated from the route table and its zod
 * schemas (`z.toJSONSchema`; OpenAPI 3.1 schemas are JSON Schema 2020-12).
 * Each operation also names the permission it needs (`x-permission`) and
 * the roles that hold it (`x-roles`), straight from rbac.ts.
 */
import { z } from 'zod'
import { ErrorEnvelopeSchema } from '../sdk/api-types.ts'
import { PERMISSIONS } from './rbac.ts'
import { openApiPath, pathParams, type AnyRoute } from './routes.ts'

type Json = Record<string, unknown>

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Json {
  const out = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Json
  delete out.$schema
  return out
}

function queryParameters(query: z.ZodType | undefined): Json[] {
  if (!(query instanceof z.ZodObject)) return []
  return Object.entries(query.shape as Record<string, z.ZodType>).map(([name, field]) => {
    const schema = jsonSchema(field, 'input')
    const parameter: Json = {
      name,
      in: 'query',
      required: !field.safeParse(undefined).success,
      schema,
    }
    if (typeof schema.description === 'string') parameter.description = schema.description
    return parameter
  })
}

/** The error answers a route may give, besides 500 and 503. */
function errorStatuses(spec: AnyRoute): number[] {
  const out = new Set<number>()
  if (spec.body !== undefined || spec.query !== undefined) out.add(400)
  if (spec.auth !== 'none') out.add(401)
  if (spec.auth === 'session') out.add(403)
  if (pathParams(spec.path).length > 0 || spec.anyAction !== undefined) out.add(404)
  if (spec.audit !== undefined) out.add(409)
  if (spec.body !== undefined) out.add(413).add(415)
  if (spec.operationId === 'login') out.add(429).add(403)
  return [...out].sort()
}

const NEXT_PAGE_HEADERS = {
  'X-Next-Offset': {
    description: 'The offset of the next page; absent on the last page.',
    schema: { type: 'integer' },
  },
  Link: { description: 'The next page, as `<url>; rel="next"`.', schema: { type: 'string' } },
}

function operation(spec: AnyRoute): Json {
  const op: Json = {
    operationId: spec.operationId,
    summary: spec.summary,
    tags: [spec.tag],
    parameters: [
      ...pathParams(spec.path).map((name) => ({
        name,
        in: 'path',
        required: true,
        schema: { type: 'string' },
      })),
      ...queryParameters(spec.query),
    ],
    responses: {},
  }
  if (spec.auth === 'none') op.security = []
  if (spec.action !== undefined) {
    op['x-permission'] = spec.action
    op['x-roles'] = [...PERMISSIONS[spec.action as keyof typeof PERMISSIONS]]
  }
  if (spec.anyAction !== undefined) op['x-permission-others'] = spec.anyAction
  if (spec.audit !== undefined) op['x-audit-action'] = spec.audit
  if (spec.body !== undefined) {
    op.requestBody = {
      required: true,
      content: { 'application/json': { schema: jsonSchema(spec.body, 'input') } },
    }
  }

  const responses = op.responses as Json
  const status = String(spec.status ?? 200)
  if (spec.response !== undefined) {
    responses[status] = {
      description: spec.summary,
      content: { 'application/json': { schema: jsonSchema(spec.response, 'output') } },
      ...(spec.paginated === true ? { headers: NEXT_PAGE_HEADERS } : {}),
    }
  } else if (spec.produces === 'none') {
    responses[status] = { description: 'Done; no body.' }
  } else {
    responses[status] = {
      description: spec.summary,
      content: { [spec.produces ?? 'application/json']: { schema: {} } },
    }
  }
  for (const code of [...errorStatuses(spec), 500, 503]) {
    responses[String(code)] = { $ref: '#/components/responses/Error' }
  }
  return op
}

export function openApiDocument(routes: readonly AnyRoute[], version: string): Json {
  const paths: Record<string, Json> = {}
  for (const spec of routes) {
    const path = openApiPath(spec.path)
    paths[path] ??= {}
    paths[path][spec.method.toLowerCase()] = operation(spec)
  }

  return {
    openapi: '3.1.0',
    info: {
      title: 'coder-mesh coordinator',
      version,
      description:
        'Self-hosted development workspaces from Terraform templates, reached over a libp2p mesh. ' +
        'Errors are ErrorEnvelope bodies with a stable `code`.',
    },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    tags: [...new Set(routes.map((r) => r.tag))].map((name) => ({ name })),
    paths,
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'A session token (cms_), an API token (cmt_) or an agent token (cma_).',
        },
      },
      schemas: { ErrorEnvelope: jsonSchema(ErrorEnvelopeSchema, 'output') },
      responses: {
        Error: {
          description: 'An error, with a stable code (see the README table).',
          headers: {
            'Retry-After': {
              description: 'On 429: seconds to wait.',
              schema: { type: 'integer' },
            },
          },
          content: {
            'application/json': { schema: { $ref: '#/components/schemas/ErrorEnvelope' } },
          },
        },
      },
    },
  }
}
