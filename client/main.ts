/**
 * The `coder-mesh` command line (bin/coder-mesh runs this file). Each
 * command group lives in commands/; heavy modules (libp2p, ssh2, the
 * coordinator, the agent) are imported inside actions, so --help and
 * --version stay fast.
 */
import { Command } from 'commander'
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ENV_CONFIG_DIR } from '../sdk/config.ts'
import { isVerbose, lifetime } from './cli.ts'
import { registerAuditCommand } from './commands/audit.ts'
import { registerConfigSshCommand } from './commands/config-ssh.ts'
import { registerLoginCommands } from './commands/login.ts'
import { registerMeshCommands } from './commands/mesh.ts'
import { registerServerCommands } from './commands/server.ts'
import { registerSshCommand } from './commands/ssh.ts'
import { registerTemplateCommands } from './commands/templates.ts'
import { registerTokenCommands } from './commands/tokens.ts'
import { registerUserCommands } from './commands/users.ts'
import { registerWorkspaceCommands } from './commands/workspaces.ts'
import { reportError } from './errors.ts'
import { packageVersion } from '../sdk/paths.ts'

export { packageVersion }

export function buildProgram(): Command {
  const program = new Command('coder-mesh')
    .description('Remote development workspaces from Terraform templates, over a libp2p mesh.')
    .version(packageVersion(), '--version', 'print the version')
    .option('--verbose', 'print error details')
    .option('--global-config <dir>', `the CLI's config folder (as ${ENV_CONFIG_DIR})`)
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ coder-mesh login http://127.0.0.1:7080\n' +
        '  $ coder-mesh templates push local\n' +
        '  $ coder-mesh create dev --template local\n' +
        '  $ coder-mesh ssh dev\n' +
        '\nEnvironment: CODER_MESH_URL, CODER_MESH_SESSION_TOKEN, CODER_MESH_CONFIG_DIR,\n' +
        'CODER_MESH_LOG_LEVEL.\n',
    )

  registerServerCommands(program)
  registerLoginCommands(program)
  registerTemplateCommands(program)
  registerWorkspaceCommands(program)
  registerSshCommand(program)
  registerConfigSshCommand(program)
  registerMeshCommands(program)
  registerUserCommands(program)
  registerTokenCommands(program)
  registerAuditCommand(program)
  return program
}

/** Runs the CLI; resolves with the exit status (the process keeps running for server/agent). */
export async function main(argv: string[] = process.argv): Promise<number | undefined> {
  const program = buildProgram()
  let verbose = false
  // Whatever escapes an action is still reported the CLI's way: one line.
  const crash = (err: unknown): void => {
    reportError(err, { verbose })
    process.exit(1)
  }
  process.on('uncaughtException', crash)
  process.on('unhandledRejection', crash)
  program.hook('preAction', (root, action) => {
    verbose = isVerbose(action)
    // Before any action reads it; config-ssh writes it into ProxyCommand.
    const dir = root.opts<{ globalConfig?: string }>().globalConfig
    if (dir !== undefined) process.env[ENV_CONFIG_DIR] = dir
  })
  try {
    await program.parseAsync(argv)
  } catch (err) {
    return reportError(err, { verbose })
  }
  return lifetime.keepRunning ? undefined : lifetime.exitCode
}

/** Exits once stdout and stderr have taken everything written to them. */
async function exitAfterFlush(code: number): Promise<never> {
  await Promise.all([drain(process.stdout), drain(process.stderr)])
  process.exit(code)
}

function drain(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.destroyed) return Promise.resolve()
  return new Promise((resolve) => {
    stream.once('error', () => resolve())
    stream.write('', () => resolve())
  })
}

function isEntryPoint(): boolean {
  const script = process.argv[1]
  if (script === undefined) return false
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isEntryPoint()) {
  const code = await main()
  if (code !== undefined) await exitAfterFlush(code)
}
