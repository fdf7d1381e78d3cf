/**
 * `coder-mesh ssh NAME [-- CMD...]` and `coder-mesh ssh --stdio NAME`.
 */
import type { Command } from 'commander'
import { MeshError } from '../../sdk/errors.ts'
import { parseWorkspaceRef } from '../../sdk/names.ts'
import { remoteCommand, workspaceFromHost } from '../args.ts'
import { examples, lifetime } from '../cli.ts'
import { apiClient } from '../session.ts'

interface SshFlags {
  stdio?: boolean
  tty?: boolean
}

export function registerSshCommand(program: Command): void {
  examples(
    program
      .command('ssh')
      .description(
        'open a shell or run a command in a workspace over the mesh; ' +
          'exits with the remote exit status',
      )
      .argument(
        '<workspace>',
        "workspace name (coder-mesh.NAME also works; OWNER/NAME for another user's)",
      )
      .argument('[command...]', 'command to run instead of a shell; put it after --')
      .option('--stdio', 'carry raw SSH on stdin/stdout, for OpenSSH ProxyCommand')
      .option('-t, --tty', 'allocate a PTY for the command too')
      .addHelpText(
        'after',
        '\nExit status: the remote one; 128+N when the remote process died of signal N;\n' +
          '255 when the session was lost (workspace stopped, agent unreachable, ~.).\n' +
          'In an interactive session, ~. at the start of a line ends it.',
      )
      .action(async (workspace: string, words: string[], flags: SshFlags) => {
        const command = remoteCommand(words)
        if (flags.stdio === true && command !== undefined) {
          throw new MeshError('MESH_BAD_ARGUMENT', '--stdio takes no command.')
        }
        // The one check every command makes (also in ApiClient): before any request.
        const name = workspaceFromHost(workspace)
        parseWorkspaceRef(name)
        const [api, { runSsh }] = await Promise.all([apiClient(), import('../ssh-session.ts')])
        lifetime.exitCode = await runSsh(api, {
          workspace: name,
          command,
          stdio: flags.stdio === true,
          tty: flags.tty === true,
        })
      }),
    'coder-mesh ssh dev',
    "coder-mesh ssh dev -- 'uname -a; exit 3'",
    'tar czf - src | coder-mesh ssh dev -- tar xzf - -C /tmp',
    "ssh -o ProxyCommand='coder-mesh ssh --stdio %h' coder-mesh.dev",
  )
}
