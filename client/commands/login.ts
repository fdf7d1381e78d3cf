/**
 * `coder-mesh login URL` (creating the first user on a new server) and
 * `coder-mesh logout`.
 */
import type { Command } from 'commander'
import { userInfo } from 'node:os'
import { ApiClient } from '../../sdk/api-client.ts'
import { isMeshError, MeshError } from '../../sdk/errors.ts'
import { normalizeServerUrl } from '../args.ts'
import { examples } from '../cli.ts'
import { write } from '../output.ts'
import { ask, askHidden, canPrompt } from '../prompt.ts'
import { apiClient, removeSession, writeSession } from '../session.ts'

interface LoginFlags {
  username?: string
  password?: string
  firstUserEmail?: string
}

export function registerLoginCommands(program: Command): void {
  examples(
    program
      .command('login')
      .description('log in to a coordinator; on a new server, create its first user (the owner)')
      .argument('<url>', 'the coordinator URL, e.g. http://127.0.0.1:7080')
      .option('--username <name>', 'user to log in as (asked on a terminal)')
      .option('--password <password>', 'password (asked on a terminal, hidden)')
      .option('--first-user-email <email>', 'email of the first user, on a new server')
      .action(async (url: string, flags: LoginFlags) => {
        await login(normalizeServerUrl(url), flags)
      }),
    'coder-mesh login http://127.0.0.1:7080',
    'coder-mesh login http://127.0.0.1:7080 --username admin --password "$PW" --first-user-email admin@example.com',
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
  const api = new ApiClient({ url })
  const { hasFirstUser } = await api.firstUserStatus()

  const username = flags.username ?? (await askOrFail('Username', '--username', localUser()))

  if (!hasFirstUser) {
    const email = flags.firstUserEmail ?? (await askOrFail('Email', '--first-user-email'))
    const password = flags.password ?? (await newPassword())
    try {
      await api.createFirstUser({ username, email, password })
      await write(`Created the first user ${username} (owner).\n`)
    } catch (err) {
      // Someone else set the server up in the meantime: just log in.
      if (!isMeshError(err) || err.code !== 'MESH_FIRST_USER_EXISTS') throw err
    }
    await finishLogin(api, url, username, password)
    return
  }

  const password = flags.password ?? (await hiddenOrFail('Password', '--password'))
  await finishLogin(api, url, username, password)
}

async function finishLogin(
  api: ApiClient,
  url: string,
  username: string,
  password: string,
): Promise<void> {
  const { sessionToken, user } = await api.login(username, password)
  await writeSession({ url, sessionToken })
  await write(`Logged in to ${url} as ${user.username}\n`)
}

async function askOrFail(question: string, flag: string, fallback?: string): Promise<string> {
  if (!canPrompt()) throw missingFlag(flag)
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
    `Missing ${flag}: pass it, or run 'coder-mesh login' on a terminal to be asked.`,
  )
}

function localUser(): string | undefined {
  try {
    return userInfo().username
  } catch {
    return undefined
  }
}
