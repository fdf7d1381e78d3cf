/**
 * `coder-mesh users create|list|show|roles|suspend|activate|delete|password`:
 * user administration (needs the owner or user-admin role, except changing
 * your own password).
 */
import { Option, type Command } from 'commander'
import { ROLES, type Role } from '../../sdk/access.ts'
import type { User } from '../../sdk/api-types.ts'
import { MeshError } from '../../sdk/errors.ts'
import { examples } from '../cli.ts'
import {
  outputOption,
  timeAgo,
  write,
  writeJson,
  writeListing,
  type OutputFormat,
} from '../output.ts'
import { askHidden, canPrompt, confirm } from '../prompt.ts'
import { apiClient } from '../session.ts'

function collectRole(value: string, previous: Role[]): Role[] {
  if (!(ROLES as readonly string[]).includes(value)) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Unknown role ${JSON.stringify(value)}: use one of ${ROLES.join(', ')}.`,
    )
  }
  return [...previous, value as Role]
}

/** The password from a flag, else asked twice on a terminal. */
async function newPassword(flag: string | undefined, what: string): Promise<string> {
  if (flag !== undefined) return flag
  if (!canPrompt()) {
    throw new MeshError('MESH_BAD_ARGUMENT', 'Missing --password: pass it, or run on a terminal.')
  }
  const password = await askHidden(`${what} (8 characters or more)`)
  if (password !== (await askHidden('Again'))) {
    throw new MeshError('MESH_BAD_ARGUMENT', 'The passwords do not match.')
  }
  return password
}

function describeUser(user: User): string {
  return `${user.username} <${user.email}>: ${user.roles.join(', ')}, ${user.status ?? 'active'}`
}

export function registerUserCommands(program: Command): void {
  const users = examples(
    program.command('users').description('manage users (owner or user-admin)'),
    'coder-mesh users list',
    'coder-mesh users create bob --email bob@example.com --role template-admin',
  )

  examples(
    users
      .command('list')
      .alias('ls')
      .description('list users')
      .addOption(outputOption())
      .action(async (flags: { output: OutputFormat }) => {
        const api = await apiClient()
        await writeListing(flags.output, await api.users(), {
          headers: ['USERNAME', 'EMAIL', 'ROLES', 'STATUS', 'CREATED'],
          row: (u) => [
            u.username,
            u.email,
            u.roles.join(','),
            u.status ?? 'active',
            timeAgo(u.createdAt),
          ],
          empty: 'No users.',
        })
      }),
    'coder-mesh users list -o json',
  )

  examples(
    users
      .command('show')
      .description('show one user')
      .argument('<name>', 'username')
      .addOption(outputOption())
      .action(async (name: string, flags: { output: OutputFormat }) => {
        const user = await (await apiClient()).user(name)
        if (flags.output === 'json') await writeJson(user)
        else await write(describeUser(user) + '\n')
      }),
    'coder-mesh users show bob',
  )

  examples(
    users
      .command('create')
      .description('create a user (a member unless --role says otherwise)')
      .argument('<name>', 'username')
      .requiredOption('--email <email>', 'their email')
      .option('--password <password>', 'their first password (asked on a terminal, hidden)')
      .addOption(
        new Option('--role <role>', `a role to give (repeatable): ${ROLES.join(', ')}`)
          .argParser(collectRole)
          .default([]),
      )
      .action(async (name: string, flags: { email: string; password?: string; role: Role[] }) => {
        const password = await newPassword(flags.password, `Password for ${name}`)
        const api = await apiClient()
        const roles = flags.role.length > 0 ? flags.role : undefined
        const user = await api.createUser({ username: name, email: flags.email, password, roles })
        await write(`Created user ${describeUser(user)}\n`)
      }),
    'coder-mesh users create bob --email bob@example.com',
    'coder-mesh users create carol --email carol@example.com --role user-admin --role member --password "$PW"',
  )

  examples(
    users
      .command('roles')
      .description("replace a user's roles")
      .argument('<name>', 'username')
      .argument('<roles...>', `roles: ${ROLES.join(', ')}`)
      .action(async (name: string, roles: string[]) => {
        const checked = roles.reduce<Role[]>((all, role) => collectRole(role, all), [])
        const user = await (await apiClient()).setRoles(name, checked)
        await write(`${describeUser(user)}\n`)
      }),
    'coder-mesh users roles bob member template-admin',
  )

  examples(
    users
      .command('suspend')
      .description('suspend a user: their sessions, tokens and mesh connections stop at once')
      .argument('<name>', 'username')
      .action(async (name: string) => {
        await (await apiClient()).suspendUser(name)
        await write(`User ${name} suspended\n`)
      }),
    'coder-mesh users suspend bob',
  )

  examples(
    users
      .command('activate')
      .description('activate a suspended user')
      .argument('<name>', 'username')
      .action(async (name: string) => {
        await (await apiClient()).activateUser(name)
        await write(`User ${name} activated\n`)
      }),
    'coder-mesh users activate bob',
  )

  examples(
    users
      .command('delete')
      .alias('rm')
      .description('delete a user who has no workspaces left')
      .argument('<name>', 'username')
      .option('-y, --yes', 'do not ask for confirmation')
      .action(async (name: string, flags: { yes?: boolean }) => {
        if (flags.yes !== true) {
          if (!canPrompt()) {
            throw new MeshError('MESH_BAD_ARGUMENT', `Deleting user ${name}: pass -y to confirm.`)
          }
          if (!(await confirm(`Delete user ${name}?`))) {
            throw new MeshError('MESH_BAD_ARGUMENT', 'Canceled.')
          }
        }
        await (await apiClient()).deleteUser(name)
        await write(`User ${name} deleted\n`)
      }),
    'coder-mesh users delete bob -y',
  )

  examples(
    users
      .command('password')
      .description("change your password, or (as an admin) another user's")
      .argument('[name]', 'username; default: you')
      .option('--password <password>', 'the new password (asked on a terminal, hidden)')
      .option('--old-password <password>', 'your current password (asked on a terminal, hidden)')
      .action(
        async (name: string | undefined, flags: { password?: string; oldPassword?: string }) => {
          const api = await apiClient()
          const self = name === undefined || name === 'me' || name === (await api.me()).username
          let oldPassword = flags.oldPassword
          if (self && oldPassword === undefined) {
            if (!canPrompt()) {
              throw new MeshError(
                'MESH_BAD_ARGUMENT',
                'Missing --old-password: pass it, or run on a terminal.',
              )
            }
            oldPassword = await askHidden('Current password')
          }
          const password = await newPassword(flags.password, 'New password')
          await api.changePassword(self ? 'me' : name!, { oldPassword, password })
          await write(self ? 'Password changed\n' : `Password of ${name} changed\n`)
        },
      ),
    'coder-mesh users password',
    'coder-mesh users password bob --password "$NEW"',
  )
}
