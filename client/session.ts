/**
 * The CLI's session: `<configDir>/session.json` holding the server URL and a
 * session token (file 0600 in a 0700 folder). CODER_MESH_URL and
 * CODER_MESH_SESSION_TOKEN override it.
 */
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ApiClient } from '../sdk/api-client.ts'
import { configDir, envSessionToken, envUrl } from '../sdk/config.ts'
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
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new MeshError('MESH_NOT_LOGGED_IN', `Cannot read the session file ${file}.`, {
      detail: (err as Error).message,
      cause: err,
    })
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

/** Saves the session atomically: folder 0700, file 0600. */
export async function writeSession(session: Session): Promise<string> {
  const dir = configDir()
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await chmod(dir, 0o700)
  const file = sessionPath()
  const tmp = `${file}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(session, null, 2) + '\n', { mode: 0o600 })
  await chmod(tmp, 0o600)
  await rename(tmp, file)
  return file
}

export async function removeSession(): Promise<void> {
  await rm(sessionPath(), { force: true })
}

/**
 * The session to use: the environment's URL and token where set, else the
 * saved ones. A saved token is only sent to the server it was issued by.
 */
export async function resolveSession(): Promise<Session> {
  const url = envUrl()
  const token = envSessionToken()
  if (url !== undefined && token !== undefined) return { url, sessionToken: token }

  const saved = await readSession()
  const resolvedUrl = url ?? saved?.url
  if (resolvedUrl === undefined) throw notLoggedIn()
  const savedToken =
    saved !== undefined && sameServer(saved.url, resolvedUrl) ? saved.sessionToken : undefined
  const resolvedToken = token ?? savedToken
  if (resolvedToken === undefined) throw notLoggedIn()
  return { url: resolvedUrl, sessionToken: resolvedToken }
}

/** An API client for the current session; MESH_NOT_LOGGED_IN without one. */
export async function apiClient(): Promise<ApiClient> {
  const session = await resolveSession()
  return new ApiClient({ url: session.url, token: session.sessionToken })
}

function sameServer(a: string, b: string): boolean {
  return a.replace(/\/+$/, '') === b.replace(/\/+$/, '')
}
