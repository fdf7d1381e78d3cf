/**
 * The CLI's session: `<configDir>/session.json` holding the server URL and a
 * session token (file 0600; a missing folder is made 0700, an existing one is
 * left as it is). CODER_MESH_URL and CODER_MESH_SESSION_TOKEN override it.
 *
 * A session is saved through a temporary file in the same folder, renamed
 * over session.json only once the login worked; the temporary file is
 * removed on any failure, so no token is left behind in it.
 */
import { randomBytes } from 'node:crypto'
import { lstat, mkdir, open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { ApiClient, tokenProblem, urlProblem } from '../sdk/api-client.ts'
import {
  configDir,
  ENV_CONFIG_DIR,
  ENV_SESSION_TOKEN,
  ENV_URL,
  envSessionToken,
  envUrl,
} from '../sdk/config.ts'
import { MeshError } from '../sdk/errors.ts'
import { notLoggedIn } from './errors.ts'

export interface Session {
  url: string
  sessionToken: string
}

export const SESSION_FILE = 'session.json'

export function sessionPath(): string {
  return join(configDir(), SESSION_FILE)
}

/** The saved session, or undefined when there is none. */
export async function readSession(): Promise<Session | undefined> {
  const file = sessionPath()
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    const code = errnoCode(err)
    if (code === 'ENOENT') return undefined
    throw new MeshError(
      'MESH_CONFIG_UNWRITABLE',
      `Cannot read the session file ${file}: ${describeErrno(err)}.`,
      {
        detail: (err as Error).message,
        cause: err,
      },
    )
  }
  try {
    const parsed = JSON.parse(text) as Partial<Session>
    if (typeof parsed.url === 'string' && typeof parsed.sessionToken === 'string') {
      return { url: parsed.url, sessionToken: parsed.sessionToken }
    }
  } catch {
    // Reported below.
  }
  throw new MeshError(
    'MESH_NOT_LOGGED_IN',
    `The session file ${file} is damaged: run 'coder-mesh login URL' again.`,
  )
}

/** A session being saved: the temporary file exists; `commit` fills and renames it. */
export interface PendingSession {
  /** Where the session will be saved. */
  readonly file: string
  /** Writes `session` and renames it over session.json. */
  commit(session: Session): Promise<string>
  /** Removes the temporary file; safe to call more than once, and after commit. */
  abort(): Promise<void>
}

/**
 * Checks that the session can be saved, before logging in: makes a missing
 * config folder (0700), refuses a config "folder" that is a file and a
 * session.json that is a folder, and creates the temporary file (0600) the
 * session will be written to. MESH_CONFIG_UNWRITABLE names the path.
 */
export async function prepareSession(): Promise<PendingSession> {
  const dir = configDir()
  await ensureConfigDir(dir)
  const file = join(dir, SESSION_FILE)
  const existing = await lstat(file).catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw unwritable(file, describeErrno(err), err)
  })
  if (existing?.isDirectory() === true) {
    throw unwritable(file, 'it is a folder, not a file; remove it')
  }

  const tmp = join(dir, `.${SESSION_FILE}.${randomBytes(6).toString('hex')}.tmp`)
  let handle: FileHandle | undefined
  try {
    // O_EXCL: never write through a file or link someone else put there.
    handle = await open(tmp, 'wx', 0o600)
    await handle.chmod(0o600)
  } catch (err) {
    await handle?.close().catch(() => undefined)
    await rm(tmp, { force: true }).catch(() => undefined)
    throw unwritable(dir, describeErrno(err), err)
  }

  let done = false
  const abort = async (): Promise<void> => {
    if (handle !== undefined) {
      const h = handle
      handle = undefined
      await h.close().catch(() => undefined)
    }
    if (!done) await rm(tmp, { force: true }).catch(() => undefined)
  }

  return {
    file,
    async commit(session) {
      if (handle === undefined) throw new Error('the pending session was already ended')
      try {
        await handle.writeFile(JSON.stringify(session, null, 2) + '\n', 'utf8')
        await handle.sync()
        await handle.close()
        handle = undefined
        await rename(tmp, file)
        done = true
        return file
      } catch (err) {
        await abort()
        throw unwritable(file, describeErrno(err), err)
      }
    },
    abort,
  }
}

/** Saves the session: folder made 0700 when missing, file 0600, replaced atomically. */
export async function writeSession(session: Session): Promise<string> {
  const pending = await prepareSession()
  return pending.commit(session)
}

/** Forgets the saved session; a session.json that is a folder is an error naming it. */
export async function removeSession(): Promise<void> {
  const file = sessionPath()
  try {
    await rm(file, { force: true })
  } catch (err) {
    const why = (await isDirectory(file)) ? 'it is a folder, not a file' : describeErrno(err)
    throw new MeshError(
      'MESH_CONFIG_UNWRITABLE',
      `Cannot remove the session file ${file}: ${why}.`,
      {
        detail: (err as Error).message,
        cause: err,
      },
    )
  }
}

/**
 * Makes the config folder if it is missing (0700, and its missing parents).
 * An existing folder keeps its mode: it may be shared on purpose (1777).
 */
export async function ensureConfigDir(dir: string): Promise<void> {
  let info
  try {
    info = await stat(dir)
  } catch (err) {
    const code = errnoCode(err)
    if (code === 'ENOTDIR') throw unwritable(dir, await fileInPath(dir), err)
    if (code !== 'ENOENT') throw unwritable(dir, describeErrno(err), err)
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 })
    } catch (mkdirErr) {
      const why =
        errnoCode(mkdirErr) === 'ENOTDIR' || errnoCode(mkdirErr) === 'EEXIST'
          ? await fileInPath(dir)
          : describeErrno(mkdirErr)
      throw unwritable(dir, why, mkdirErr)
    }
    return
  }
  if (!info.isDirectory()) throw unwritable(dir, 'it is a file, not a folder')
}

/** "X is a file, not a folder" for the first file on the way to `dir`. */
async function fileInPath(dir: string): Promise<string> {
  let path = dir
  for (;;) {
    const parent = dirname(path)
    const info = await stat(path).catch(() => undefined)
    if (info !== undefined && !info.isDirectory()) return `${path} is a file, not a folder`
    if (parent === path) return 'a part of the path is a file, not a folder'
    path = parent
  }
}

function unwritable(path: string, why: string, cause?: unknown): MeshError {
  const source = process.env[ENV_CONFIG_DIR] !== undefined ? ` (${ENV_CONFIG_DIR})` : ''
  return new MeshError(
    'MESH_CONFIG_UNWRITABLE',
    `Cannot save the session in ${path}${source}: ${why}.`,
    { detail: cause instanceof Error ? cause.message : undefined, cause },
  )
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() === true
}

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code
}

function describeErrno(err: unknown): string {
  switch (errnoCode(err)) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied'
    case 'EROFS':
      return 'the file system is read-only'
    case 'ENOSPC':
      return 'the disk is full'
    case 'EDQUOT':
      return 'the disk quota is used up'
    case 'EISDIR':
      return 'it is a folder, not a file'
    case 'ENOTDIR':
      return 'a part of the path is a file, not a folder'
    default:
      return err instanceof Error ? err.message : String(err)
  }
}

/**
 * The session to use: the environment's URL and token where set, else the
 * saved ones. A saved token is only sent to the server it was issued by.
 * A malformed URL or token is refused here, naming where it came from.
 */
export async function resolveSession(): Promise<Session> {
  const url = checkUrl(envUrl(), ENV_URL)
  const token = checkToken(envSessionToken(), ENV_SESSION_TOKEN)
  if (url !== undefined && token !== undefined) return { url, sessionToken: token }

  const saved = await readSession()
  const resolvedUrl = url ?? checkUrl(saved?.url, `The URL in ${sessionPath()}`)
  if (resolvedUrl === undefined) throw notLoggedIn()
  const savedToken =
    saved !== undefined && sameServer(saved.url, resolvedUrl) ? saved.sessionToken : undefined
  const resolvedToken = token ?? checkToken(savedToken, `The token in ${sessionPath()}`)
  if (resolvedToken === undefined) throw notLoggedIn()
  return { url: resolvedUrl, sessionToken: resolvedToken }
}

function checkUrl(url: string | undefined, source: string): string | undefined {
  if (url === undefined) return undefined
  const problem = urlProblem(url)
  if (problem === undefined) return url
  throw new MeshError(
    'MESH_BAD_ARGUMENT',
    `${source} ${JSON.stringify(url)} ${problem}; use e.g. http://127.0.0.1:7080.`,
  )
}

function checkToken(token: string | undefined, source: string): string | undefined {
  if (token === undefined) return undefined
  const problem = tokenProblem(token)
  if (problem === undefined) return token
  const again = source === ENV_SESSION_TOKEN ? '' : ": run 'coder-mesh login URL' again"
  throw new MeshError('MESH_BAD_ARGUMENT', `${source} is malformed: it ${problem}${again}.`)
}

/** An API client for the current session; MESH_NOT_LOGGED_IN without one. */
export async function apiClient(): Promise<ApiClient> {
  const session = await resolveSession()
  return new ApiClient({ url: session.url, token: session.sessionToken })
}

function sameServer(a: string, b: string): boolean {
  return a.replace(/\/+$/, '') === b.replace(/\/+$/, '')
}
