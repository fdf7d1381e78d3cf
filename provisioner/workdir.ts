/**
 * A build's working directory: `<workRoot>/<buildId>`, holding the template's
 * files and the workspace's state, removed when the build ends.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { MeshError } from '../sdk/errors.ts'
import type { ProvisionFile } from './types.ts'

/** Set to 1 to keep each build's working directory for inspection. */
export const ENV_KEEP_WORKDIRS = 'CODER_MESH_KEEP_WORKDIRS'

export const STATE_FILE = 'terraform.tfstate'
/** Written by Terraform instead of STATE_FILE when it could not save the state. */
export const ERRORED_STATE_FILE = 'errored.tfstate'

export function keepWorkdirs(): boolean {
  return process.env[ENV_KEEP_WORKDIRS] === '1'
}

const BUILD_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/**
 * The provisioner's own folder in a working directory: Terraform's output
 * (written to files, not pipes, so that Terraform outlives a coordinator
 * that dies mid-build instead of dying of SIGPIPE) and a record of the
 * running terraform process, for the next coordinator to find it by.
 */
export const RUN_DIR = '.coder-mesh'
export const STDOUT_FILE = `${RUN_DIR}/stdout.log`
export const STDERR_FILE = `${RUN_DIR}/stderr.log`
export const PROCESS_FILE = `${RUN_DIR}/terraform.json`

/**
 * Why a template file path (in normal form) names something that belongs
 * to a build rather than to a template, or undefined: Terraform's state
 * (the workspace's state comes from the store), its data folder, and the
 * provisioner's own folder. The coordinator refuses such files at push;
 * the provisioner leaves them out of versions stored before that.
 */
export function reservedPathProblem(path: string): string | undefined {
  const top = path.split('/')[0] ?? path
  if (top.startsWith(STATE_FILE) || top === ERRORED_STATE_FILE) {
    return 'is Terraform state, which the workspace keeps, not the template'
  }
  if (top === '.terraform') return "is inside Terraform's data folder .terraform"
  if (top === RUN_DIR) return `is inside ${RUN_DIR}, the provisioner's own folder`
  return undefined
}

function badPath(path: string, why: string): MeshError {
  return new MeshError('MESH_BAD_REQUEST', `Template file path ${JSON.stringify(path)} ${why}.`, {
    validations: [{ field: 'files', detail: `${path}: ${why}` }],
  })
}

/**
 * A template file's path in normal form ("a/./b.tf" is "a/b.tf"). Throws
 * MESH_BAD_REQUEST for a path that is empty, absolute, uses "\" or leaves the
 * template's folder through "..".
 */
export function templatePath(path: string): string {
  if (path.includes('\0')) throw badPath(path, 'contains a NUL byte')
  if (path.includes('\\')) throw badPath(path, 'contains "\\"; use "/" between folders')
  if (path.startsWith('/') || /^[A-Za-z]:/.test(path)) throw badPath(path, 'is absolute')
  const parts = path.split('/').filter((part) => part !== '' && part !== '.')
  if (parts.includes('..')) throw badPath(path, 'leaves the template folder with ".."')
  if (parts.length === 0) throw badPath(path, 'names no file')
  return parts.join('/')
}

export interface CheckedFiles {
  files: ProvisionFile[]
  /** Files left out because they belong to a build, not a template (reservedPathProblem). */
  ignored: string[]
}

/** Normalizes every path; throws MESH_BAD_REQUEST for a bad or clashing one. */
export function checkFiles(files: ProvisionFile[]): CheckedFiles {
  const out: ProvisionFile[] = []
  const ignored: string[] = []
  const seen = new Set<string>()
  const folders = new Set<string>()
  for (const file of files) {
    const path = templatePath(file.path)
    if (reservedPathProblem(path) !== undefined) {
      ignored.push(path)
      continue
    }
    if (seen.has(path)) throw badPath(file.path, 'appears twice')
    if (folders.has(path)) throw badPath(file.path, 'is also a folder of another file')
    const parts = path.split('/')
    for (let i = 1; i < parts.length; i++) {
      const folder = parts.slice(0, i).join('/')
      if (seen.has(folder)) throw badPath(folder, 'is also a folder of another file')
      folders.add(folder)
    }
    seen.add(path)
    out.push({ path, content: file.content })
  }
  return { files: out, ignored }
}

/** Throws MESH_BAD_REQUEST unless the build id can name a folder. */
export function checkBuildId(buildId: string): void {
  if (!BUILD_ID.test(buildId)) {
    throw new MeshError(
      'MESH_BAD_REQUEST',
      `Build id ${JSON.stringify(buildId)} cannot name a working directory.`,
      { validations: [{ field: 'buildId', detail: 'use letters, digits, ".", "_" and "-"' }] },
    )
  }
}

export function workdirPath(workRoot: string, buildId: string): string {
  return join(resolve(workRoot), buildId)
}

/**
 * Creates `dir` afresh (private to this user) with the files and, when
 * given, the state. Paths must have passed checkFiles.
 */
export async function prepareWorkdir(
  dir: string,
  files: ProvisionFile[],
  state: Buffer | undefined,
): Promise<void> {
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true, mode: 0o700 })
  for (const file of files) {
    const target = join(dir, file.path)
    await mkdir(dirname(target), { recursive: true, mode: 0o700 })
    await writeFile(target, file.content, { mode: 0o600 })
  }
  if (state !== undefined) await writeFile(join(dir, STATE_FILE), state, { mode: 0o600 })
  await mkdir(join(dir, RUN_DIR), { mode: 0o700 })
}

export interface ReadState {
  state: Buffer
  file: string
}

/** The state Terraform left in `dir`, if any; errored.tfstate wins when present. */
export async function readState(dir: string): Promise<ReadState | undefined> {
  for (const file of [ERRORED_STATE_FILE, STATE_FILE]) {
    try {
      return { state: await readFile(join(dir, file)), file }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  return undefined
}

export async function removeWorkdir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
}
