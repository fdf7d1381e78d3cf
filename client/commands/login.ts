/**
 * `coder-mesh login URL` (creating the first user on a new server) and
 * `coder-mesh logout`.
 */
import type { Command } from 'commander'
import { userInfo } from 'node:os'
import { ApiClient, tokenProblem } from '../../sdk/api-client.ts'
import { isMeshError, MeshError } from '../../sdk/errors.ts'
import { normalizeServerUrl } from '../args.ts'
import { examples } from '../cli.ts'
import { printable, write } from '../output.ts'
import { ask, askHidden, canPrompt } from '../prompt.ts'
import { apiClient, prepareSession, removeSession, type PendingSession } from '../session.ts'

interface LoginFlags {
  username?: string
  password?: string
  passwordStdin?: boolean
  firstUserEmail?: string
}

/** Longest password read from stdin, in bytes (the API takes 256 characters). */
const MAX_STDIN_PASSWORD_BYTES = 4096

export function registerLoginCommands(program: Command): void {
  examples(
    program
      .command('login')
      .description('log in to a coordinator; on a new server, create its first user (the owner)')
      .argument('<url>', 'the coordinator URL, e.g. http://127.0.0.1:7080')
      .option('--username <name>', 'user to log in as (asked on a terminal)')
      .option(
        '--password <password>',
        'password (asked on a terminal, hidden); other users can see it in ps: ' +
          'prefer --password-stdin in scripts',
      )
      .option(
        '--password-stdin',
        'read the password from stdin (one trailing newline is dropped); asks nothing',
      )
      .option('--first-user-email <email>', 'email of the first user, on a new server')
      .action(async (url: string, flags: LoginFlags) => {
        await login(normalizeServerUrl(url), flags)
      }),
    'coder-mesh login http://127.0.0.1:7080',
    'printf %s "$PW" | coder-mesh login http://127.0.0.1:7080 --username admin --password-stdin',
    'coder-mesh login http://127.0.0.1:7080 --username admin --password-stdin --first-user-email admin@example.com < pw.txt',
  )

  examples(
    program
      .command('logout')
      .description('end the session and forget its token')
      .action(async () => {
        try {
          await (await apiClient()).logout()
        } catch (err) {
          // The token may be expired or the server gone: forget it all the same.
          if (!isMeshError(err)) throw err
        }
        await removeSession()
        await write('Logged out.\n')
      }),
    'coder-mesh logout',
  )
}

async function login(url: string, flags: LoginFlags): Promise<void> {
  if (flags.password !== undefined && flags.passwordStdin === true) {
    throw new MeshError('MESH_BAD_ARGUMENT', 'Pass --password or --password-stdin, not both.')
  }
  // With --password-stdin, stdin is the password: nothing can be asked.
  const interactive = flags.passwordStdin !== true
  const stdinPassword = flags.passwordStdin === true ? await readStdinPassword() : undefined

  const api = new ApiClient({ url })
  // A foreign server (an HTML page, `{}` to everything) fails here, before
  // anything is created or saved.
  await api.buildInfo()
  const { hasFirstUser } = await api.firstUserStatus()

  const username =
    flags.username ?? (await askOrFail('Username', '--username', interactive, localUser()))

  if (!hasFirstUser) {
    const email =
      flags.firstUserEmail ?? (await askOrFail('Email', '--first-user-email', interactive))
    const password = stdinPassword ?? flags.password ?? (await newPassword())
    await withPendingSession(async (pending) => {
      try {
        await api.createFirstUser({ username, email, password })
        await write(`Created the first user ${printable(username)} (owner).\n`)
      } catch (err) {
        // Someone else set the server up in the meantime: just log in.
        if (!isMeshError(err) || err.code !== 'MESH_FIRST_USER_EXISTS') throw err
      }
      await finishLogin(api, url, username, password, pending)
    })
    return
  }

  const password = stdinPassword ?? flags.password ?? (await hiddenOrFail('Password', '--password'))
  await withPendingSession((pending) => finishLogin(api, url, username, password, pending))
}

/**
 * Runs `fn` with the session file prepared (so an unwritable config folder
 * fails before logging in), removing the temporary file whatever happens.
 */
async function withPendingSession(fn: (pending: PendingSession) => Promise<void>): Promise<void> {
  const pending = await prepareSession()
  try {
    await fn(pending)
  } finally {
    await pending.abort()
  }
}

async function finishLogin(
  api: ApiClient,
  url: string,
  username: string,
  password: string,
  pending: PendingSession,
): Promise<void> {
  const { sessionToken, user } = await api.login(username, password)
  const problem = tokenProblem(sessionToken)
  if (problem !== undefined) {
    throw new MeshError(
      'MESH_NOT_A_COORDINATOR',
      `${url} does not look like a coder-mesh server (the session token it answered ${problem}).`,
    )
  }
  try {
    await pending.commit({ url, sessionToken })
  } catch (err) {
    // The token could not be saved: end that session rather than leave it live.
    await new ApiClient({ url, token: sessionToken }).logout().catch(() => undefined)
    throw err
  }
  await write(`Logged in to ${url} as ${printable(user.username)}\n`)
}

/**
 * The password piped to --password-stdin, without one trailing newline
 * (`echo` adds one). Refuses an empty one and one of several lines.
 */
async function readStdinPassword(): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of process.stdin as AsyncIterable<Buffer | string>) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    size += buffer.length
    if (size > MAX_STDIN_PASSWORD_BYTES) {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `The password on stdin is longer than ${MAX_STDIN_PASSWORD_BYTES} bytes: pipe in the password only.`,
      )
    }
    chunks.push(buffer)
  }
  const password = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '')
  if (password === '') {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      'No password on stdin: pipe it in, e.g. printf %s "$PW" | coder-mesh login URL --password-stdin.',
    )
  }
  if (/[\r\n]/.test(password)) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      'The password on stdin holds more than one line: pipe in the password only.',
    )
  }
  return password
}

async function askOrFail(
  question: string,
  flag: string,
  interactive: boolean,
  fallback?: string,
): Promise<string> {
  if (!interactive || !canPrompt()) throw missingFlag(flag)
  const answer = await ask(question, fallback)
  if (answer === '') throw missingFlag(flag)
  return answer
}

async function hiddenOrFail(question: string, flag: string): Promise<string> {
  if (!canPrompt()) throw missingFlag(flag)
  return askHidden(question)
}

async function newPassword(): Promise<string> {
  const password = await hiddenOrFail(
    'Password for the first user (8 characters or more)',
    '--password',
  )
  const again = await askHidden('Password again')
  if (password !== again) throw new MeshError('MESH_BAD_ARGUMENT', 'The passwords do not match.')
  return password
}

function missingFlag(flag: string): MeshError {
  return new MeshError(
    'MESH_BAD_ARGUMENT',
    `Missing ${flag}: pass it, or run 'coder-mesh login' on a terminal to be asked ` +
      '(with --password-stdin, nothing is asked).',
  )
}

function localUser(): string | undefined {
  try {
    return userInfo().username
  } catch {
    return undefined
  }
}
