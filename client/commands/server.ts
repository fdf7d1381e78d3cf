/**
 * `coder-mesh server` and `coder-mesh agent`: the long-running roles. Their
 * modules are loaded only when the command runs, so other commands stay fast.
 */
import type { Command } from 'commander'
import { stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { defaultDataDir, ENV_DATA_DIR } from '../../sdk/config.ts'
import { MeshError } from '../../sdk/errors.ts'
import { examples, lifetime } from '../cli.ts'

interface ServerFlags {
  address?: string
  dataDir?: string
  accessUrl?: string
  stunAddress?: string
  relayAddress?: string
  relayWsAddress?: string
}

export function registerServerCommands(program: Command): void {
  examples(
    program
      .command('server')
      .description('run the coordinator: API, store, relay, STUN and provisioner')
      .option('--address <host:port>', 'address to listen on (default 127.0.0.1:7080)')
      .option('--data-dir <dir>', 'where the store lives (default: $CODER_MESH_DATA_DIR or XDG)')
      .option('--access-url <url>', 'the URL workspaces and users reach this server at')
      .option(
        '--stun-address <ipv4:port|off>',
        'UDP address of the STUN responder for WebRTC hole punching (default 0.0.0.0, a free port)',
      )
      .option(
        '--relay-address <ipv4:port>',
        'TCP address of the relay agents and clients fall back to (default 0.0.0.0, a free port)',
      )
      .option(
        '--relay-ws-address <ipv4:port|off>',
        "TCP address of the relay's WebSockets listener (default 0.0.0.0, a free port)",
      )
      .action(async (flags: ServerFlags) => {
        await checkDataDir(
          flags.dataDir ?? defaultDataDir(),
          flags.dataDir !== undefined
            ? '--data-dir'
            : (process.env[ENV_DATA_DIR] ?? '') !== ''
              ? ENV_DATA_DIR
              : 'the default',
        )
        lifetime.keepRunning = true
        const { runServerCommand } = await import('../../coordinator/index.ts')
        await runServerCommand({
          address: flags.address,
          dataDir: flags.dataDir,
          accessUrl: flags.accessUrl,
          stunAddress: flags.stunAddress === 'off' ? false : flags.stunAddress,
          relayAddress: flags.relayAddress,
          relayWsAddress: flags.relayWsAddress === 'off' ? false : flags.relayWsAddress,
        })
      }),
    'coder-mesh server --address 0.0.0.0:7080 --access-url http://dev.example.com:7080 \\\n' +
      '    --relay-address 0.0.0.0:7081 --relay-ws-address off --stun-address 0.0.0.0:3478',
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

/**
 * MESH_BAD_ARGUMENT in one line when the data folder cannot be one: it is a
 * file, a part of its path is a file, or it cannot be looked at. A missing
 * folder is fine: the server makes it.
 */
export async function checkDataDir(dir: string, source: string): Promise<void> {
  const bad = (why: string): MeshError =>
    new MeshError('MESH_BAD_ARGUMENT', `The data folder ${dir} (${source}) ${why}.`)
  let path = resolve(dir)
  for (;;) {
    let info
    try {
      info = await stat(path)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM') throw bad(`cannot be reached: permission denied`)
      if (code !== 'ENOENT' && code !== 'ENOTDIR')
        throw bad(`cannot be used: ${(err as Error).message}`)
      const parent = dirname(path)
      if (parent === path) return
      path = parent
      continue
    }
    if (info.isDirectory()) return
    if (path === resolve(dir)) throw bad('is a file, not a folder')
    throw bad(`cannot be made: ${path} is a file, not a folder`)
  }
}
