/**
 * Templates and their versions. A push stores the files themselves in the
 * store (so a build never depends on the pusher's disk) as a new version,
 * numbered one past the last, and makes it the active one.
 */
import type { PushTemplateRequest, Template, TemplateVersion } from '../sdk/api-types.ts'
import { MeshError, type Validation } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { assertName } from '../sdk/names.ts'
import type { ProvisionFile } from '../provisioner/index.ts'
import { reservedPathProblem } from '../provisioner/workdir.ts'
import { MAX_TEMPLATE_FILES_BYTES } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { TemplateRecord, TemplateVersionRecord, UserRecord } from './records.ts'
import { padKey, type Store } from './store.ts'
import { quoteText, unsafeCharacter } from './text.ts'

export interface TemplatesComponents {
  store: Store
  locks: KeyedLock
  log: Logger
}

export interface Templates {
  push(name: string, request: PushTemplateRequest, by: UserRecord): Promise<TemplateVersion>
  list(): Promise<Template[]>
  /** Versions, oldest first; MESH_TEMPLATE_NOT_FOUND for an unknown template. */
  versions(name: string): Promise<TemplateVersion[]>
  get(name: string): Promise<TemplateRecord | undefined>
  /** A version's files, decoded; MESH_TEMPLATE_NOT_FOUND if the version is gone. */
  files(name: string, version: number): Promise<ProvisionFile[]>
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

function versionKey(name: string, version: number): string {
  return `${name}/${padKey(version, 8)}`
}

/** Longest file or folder name most file systems allow, in bytes. */
const MAX_NAME_BYTES = 255
/** Longest template file path, in bytes. */
const MAX_PATH_BYTES = 1024

/** Why a template file path is unsafe to write under a working folder, or undefined. */
export function templatePathProblem(path: string): string | undefined {
  if (path.includes('\0')) return 'must not contain a NUL byte'
  const unsafe = unsafeCharacter(path)
  if (unsafe !== undefined) return `must not contain control characters (${unsafe})`
  if (path.includes('\\')) return 'must use "/" between folders'
  if (path.startsWith('/') || /^[A-Za-z]:/.test(path)) return 'must be a relative path'
  const parts = path.split('/')
  if (parts.includes('..')) return 'must not contain ".."'
  if (parts.some((part) => part === '' || part === '.')) return 'must not hold empty or "." parts'
  if (Buffer.byteLength(path) > MAX_PATH_BYTES) return `must be at most ${MAX_PATH_BYTES} bytes`
  if (parts.some((part) => Buffer.byteLength(part) > MAX_NAME_BYTES)) {
    return `must not hold a name over ${MAX_NAME_BYTES} bytes`
  }
  return reservedPathProblem(path)
}

/**
 * Whether Terraform reads `path` as configuration: a `.tf` or `.tf.json`
 * file at the top level that it does not skip as hidden or as an editor's
 * backup.
 */
export function isTerraformFile(path: string): boolean {
  if (path.includes('/') || path.startsWith('.') || path.endsWith('~')) return false
  if (path.startsWith('#') && path.endsWith('#')) return false
  return path.endsWith('.tf') || path.endsWith('.tf.json')
}

function notFound(name: string): MeshError {
  return new MeshError(
    'MESH_TEMPLATE_NOT_FOUND',
    `Template ${JSON.stringify(name)} does not exist.`,
  )
}

function toTemplateVersion(record: TemplateVersionRecord): TemplateVersion {
  return { ...record, message: safeText(record.message), files: record.files.map(safeText) }
}

function invalid(what: string, validations: Validation[]): MeshError {
  const first = validations[0]!
  return new MeshError('MESH_VALIDATION', `Invalid ${what}: ${first.detail}.`, { validations })
}

/**
 * Checks the version's files and message and returns the files' decoded
 * total size. Each validation names the file's path as well as its field.
 */
function checkRequest(request: PushTemplateRequest): number {
  const validations: Validation[] = []
  const paths = new Map<string, number>()
  let total = 0

  request.files.forEach((file, i) => {
    const field = `files.${i}.path`
    const problem = templatePathProblem(file.path)
    if (problem !== undefined) {
      validations.push({ field, detail: `${quoteText(file.path)} ${problem}` })
    } else if (paths.has(file.path)) {
      validations.push({ field, detail: `${quoteText(file.path)} is a duplicate` })
    } else {
      paths.set(file.path, i)
    }

    if (!BASE64.test(file.content) || file.content.length % 4 === 1) {
      validations.push({
        field: `files.${i}.content`,
        detail: `${quoteText(file.path)} must be base64`,
      })
      return
    }
    total += Buffer.byteLength(file.content, 'base64')
  })

  // A file where another one needs a folder: no working folder can hold both.
  for (const [path, i] of paths) {
    const parts = path.split('/')
    for (let n = 1; n < parts.length; n++) {
      const folder = parts.slice(0, n).join('/')
      if (paths.has(folder)) {
        validations.push({
          field: `files.${paths.get(folder)!}.path`,
          detail: `${quoteText(folder)} is a file, but ${quoteText(path)} (files.${i}.path) needs it to be a folder`,
        })
      }
    }
  }

  if (validations.length === 0 && ![...paths.keys()].some(isTerraformFile)) {
    validations.push({
      field: 'files',
      detail: 'the template needs at least one Terraform file (*.tf or *.tf.json) at the top level',
    })
  }

  const message = request.message ?? ''
  const unsafe = unsafeCharacter(message)
  if (unsafe !== undefined) {
    validations.push({
      field: 'message',
      detail: `the message must be one line without control characters (found ${unsafe})`,
    })
  }

  if (validations.length > 0) throw invalid('template version', validations)
  if (total > MAX_TEMPLATE_FILES_BYTES) {
    throw new MeshError(
      'MESH_BODY_TOO_LARGE',
      `The template's files total ${total} bytes; at most ${MAX_TEMPLATE_FILES_BYTES} are allowed.`,
    )
  }
  return total
}

/** Escapes unsafe characters a version stored before they were refused still holds. */
function safeText(text: string): string {
  return unsafeCharacter(text) === undefined ? text : quoteText(text).slice(1, -1)
}

export function createTemplates(components: TemplatesComponents): Templates {
  const { store, locks } = components
  const log = components.log.child({ component: 'templates' })

  return {
    push(name, request, by) {
      assertName('template', name)
      const bytes = checkRequest(request)

      return locks.run(`template:${name}`, async () => {
        const now = new Date().toISOString()
        const previous = await store.templates.get(name)
        const version = (previous?.versions ?? 0) + 1
        const template: TemplateRecord = {
          name,
          activeVersion: version,
          versions: version,
          createdAt: previous?.createdAt ?? now,
          updatedAt: now,
        }
        const record: TemplateVersionRecord = {
          template: name,
          version,
          message: request.message ?? '',
          files: request.files.map((f) => f.path).sort(),
          createdBy: by.username,
          createdAt: now,
        }
        const files = request.files.map((f) => ({ path: f.path, content: f.content }))

        await store
          .batch()
          .put(store.templateFiles, versionKey(name, version), { files })
          .put(store.templateVersions, versionKey(name, version), record)
          .put(store.templates, name, template)
          .write({ sync: true })
        log.info({ template: name, version, bytes }, 'template version pushed')
        return toTemplateVersion(record)
      })
    },

    async list() {
      const out: Template[] = []
      for await (const record of store.templates.values()) out.push({ ...record })
      return out
    },

    async versions(name) {
      assertName('template', name)
      if ((await store.templates.get(name)) === undefined) throw notFound(name)

      const out: TemplateVersion[] = []
      for await (const record of store.templateVersions.values({ prefix: `${name}/` })) {
        out.push(toTemplateVersion(record))
      }
      return out
    },

    get: (name) => store.templates.get(name),

    async files(name, version) {
      const record = await store.templateFiles.get(versionKey(name, version))
      if (record === undefined) throw notFound(`${name}@${version}`)
      return record.files.map((f) => ({ path: f.path, content: Buffer.from(f.content, 'base64') }))
    },
  }
}
