import { MeshError } from './errors.ts'

/** Longest workspace, template or user name: 32 characters. */
export const MAX_NAME_LENGTH = 32

const NAME_RULE =
  'use 1 to 32 lowercase letters, digits and single hyphens, ' +
  'starting and ending with a letter or digit (e.g. "dev-1")'

/**
 * Why `name` is not a valid resource name, or undefined when it is.
 * Names become SSH host names (`coder-mesh.NAME`) and DNS labels, so the rule
 * is a lowercase RFC 1123 label, shortened to 32 characters.
 */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty'
  if (name.length > MAX_NAME_LENGTH) return `is ${name.length} characters long; at most 32 allowed`
  if (/[A-Z]/.test(name)) return 'must be lowercase'
  if (!/^[a-z0-9-]+$/.test(name)) return 'may hold only a-z, 0-9 and "-"'
  if (name.startsWith('-') || name.endsWith('-')) return 'must not start or end with "-"'
  if (name.includes('--')) return 'must not contain "--"'
  return undefined
}

/** Throws MESH_INVALID_NAME naming the rule that failed. */
export function assertName(kind: string, name: string): void {
  const problem = nameProblem(name)
  if (problem === undefined) return
  throw new MeshError(
    'MESH_INVALID_NAME',
    `Invalid ${kind} name ${JSON.stringify(name)}: ${problem}.`,
    {
      detail: NAME_RULE,
      validations: [{ field: 'name', detail: problem }],
    },
  )
}

/**
 * A workspace as commands name it: `NAME` for one of yours, or `OWNER/NAME`
 * for another user's (the API's `?owner=`; owners may act on anyone's).
 */
export interface WorkspaceRef {
  name: string
  owner?: string
}

/**
 * Parses and checks `NAME` or `OWNER/NAME`; throws MESH_INVALID_NAME for
 * anything else (`.`, `..`, `a/b/c`, uppercase...), before any request.
 */
export function parseWorkspaceRef(input: string): WorkspaceRef {
  const parts = input.split('/')
  if (parts.length === 1) {
    assertName('workspace', input)
    return { name: input }
  }
  const [owner = '', name = ''] = parts
  if (parts.length > 2) {
    throw new MeshError(
      'MESH_INVALID_NAME',
      `Invalid workspace ${JSON.stringify(input)}: use NAME, or OWNER/NAME for another user's.`,
      { detail: NAME_RULE, validations: [{ field: 'name', detail: 'has more than one "/"' }] },
    )
  }
  const ownerProblem = nameProblem(owner)
  if (ownerProblem !== undefined) {
    throw new MeshError(
      'MESH_INVALID_NAME',
      `Invalid owner ${JSON.stringify(owner)} in workspace ${JSON.stringify(input)}: ${ownerProblem}.`,
      { detail: NAME_RULE, validations: [{ field: 'owner', detail: ownerProblem }] },
    )
  }
  assertName('workspace', name)
  return { owner, name }
}
