/**
 * Runs the real CLI (bin/coder-mesh) as a child process with a clean
 * environment: its own config dir and HOME, no session from the caller.
 */
import { execa } from 'execa'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const BIN = fileURLToPath(new URL('../../bin/coder-mesh', import.meta.url))

export interface CliResult {
  exitCode: number
  stdout: string
  stderr: string
}

export interface CliEnv {
  home: string
  configDir: string
  env: Record<string, string>
}

export async function cliEnv(extra: Record<string, string> = {}): Promise<CliEnv> {
  const home = await mkdtemp(join(tmpdir(), 'coder-mesh-cli-'))
  const configDir = join(home, 'config')
  return {
    home,
    configDir,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: home,
      CODER_MESH_CONFIG_DIR: configDir,
      CODER_MESH_LOG_LEVEL: 'warn',
      LANG: 'C.UTF-8',
      ...extra,
    },
  }
}

export async function runCli(
  env: Record<string, string>,
  args: string[],
  options: { input?: string | Buffer; timeout?: number; cwd?: string } = {},
): Promise<CliResult> {
  const r = await execa(BIN, args, {
    env,
    extendEnv: false,
    reject: false,
    input: options.input ?? '',
    timeout: options.timeout ?? 60_000,
    cwd: options.cwd,
    stripFinalNewline: false,
  })
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}
