/**
 * `coder-mesh server` and `coder-mesh agent`: the long-running roles. Their
 * modules are loaded only when the command runs, so other commands stay fast.
 */
import type { Command } from 'commander'
import { examples, lifetime } from '../cli.ts'

interface ServerFlags {
  address?: string
  dataDir?: string
  accessUrl?: string
}

export function registerServerCommands(program: Command): void {
  examples(
    program
      .command('server')
      .description('run the coordinator: API, web UI, store, relay and provisioner')
      .option('--address <host:port>', 'address to listen on (default 127.0.0.1:7080)')
      .option('--data-dir <dir>', 'where the store lives (default: $CODER_MESH_DATA_DIR or XDG)')
      .option('--access-url <url>', 'the URL workspaces and users reach this server at')
      .action(async (flags: ServerFlags) => {
        lifetime.keepRunning = true
        const { runServerCommand } = await import('../../coordinator/index.ts')
        await runServerCommand({
          address: flags.address,
          dataDir: flags.dataDir,
          accessUrl: flags.accessUrl,
        })
      }),
    'coder-mesh server --address 0.0.0.0:7080 --access-url http://dev.example.com:7080',
  )

  examples(
    program
      .command('agent')
      .description(
        'run the workspace agent (reads CODER_MESH_URL and CODER_MESH_AGENT_TOKEN); ' +
          'templates start it',
      )
      .action(async () => {
        lifetime.keepRunning = true
        const { runAgentCommand } = await import('../../agent/index.ts')
        await runAgentCommand()
      }),
    'CODER_MESH_URL=http://10.0.0.1:7080 CODER_MESH_AGENT_TOKEN=... coder-mesh agent',
  )
}
