/**
 * `coder-mesh config-ssh`: keeps a managed block in the OpenSSH client
 * config so that `ssh coder-mesh.NAME`, scp, rsync and editors that read
 * ~/.ssh/config reach workspaces through `coder-mesh ssh --stdio`.
 */
import type { Command } from 'commander'
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, open, readFile, realpath, rename, rm, stat } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { configDir, ENV_CONFIG_DIR } from '../../sdk/config.ts'
import { MeshError } from '../../sdk/errors.ts'
import { examples } from '../cli.ts'
import { printable } from '../output.ts'
import { canPrompt, confirm } from '../prompt.ts'
import { apiClient } from '../session.ts'
import { findBlock, HOST_PREFIX, removeBlock, renderBlock, replaceBlock } from '../ssh-config.ts'

interface ConfigSshFlags {
  sshConfigFile: string
  yes?: boolean
  dryRun?: boolean
  remove?: boolean
}

/** The CLI's own launcher, which brings the right Node with it. */
export function cliBinary(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../bin/coder-mesh')
}

function expandHome(file: string): string {
  return file === '~' || file.startsWith('~/') ? join(homedir(), file.slice(1)) : file
}

async function readConfig(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return ''
    throw new MeshError(
      'MESH_CONFIG_UNWRITABLE',
      `Cannot read the SSH config ${file}: ${(err as Error).message}.`,
      { cause: err },
    )
  }
}

/**
 * Writes `text` to `file` through a temporary file renamed over it, so an
 * interrupted run leaves the old file or the new one, never half of one.
 * A symlinked config (dotfiles) is written where the link points; the
 * file keeps its mode, and a new one is private (0600, folder 0700).
 */
async function writeConfig(file: string, text: string): Promise<void> {
  let target = file
  try {
    target = await realpath(file)
  } catch {
    // Not there yet: created below.
  }
  const mode = await stat(target).then(
    (s) => s.mode & 0o777,
    () => 0o600,
  )
  await mkdir(dirname(target), { recursive: true, mode: 0o700 })
  const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`
  try {
    const handle = await open(temp, 'wx', mode)
    try {
      await handle.writeFile(text)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await chmod(temp, mode)
    await rename(temp, target)
  } catch (err) {
    await rm(temp, { force: true })
    throw new MeshError(
      'MESH_CONFIG_UNWRITABLE',
      `Cannot write the SSH config ${target}: ${(err as Error).message}.`,
      { cause: err },
    )
  }
}

async function workspaceNames(): Promise<string[]> {
  const api = await apiClient()
  const [me, workspaces] = await Promise.all([api.me(), api.workspaces()])
  // Host names carry no owner: only the user's own workspaces get one.
  return workspaces.filter((w) => w.owner === me.username).map((w) => w.name)
}

export function registerConfigSshCommand(program: Command): void {
  examples(
    program
      .command('config-ssh')
      .description(
        `write Host ${HOST_PREFIX}NAME entries to your OpenSSH config, so that ssh, scp, ` +
          'rsync and editors reach workspaces over the mesh',
      )
      .option('--ssh-config-file <file>', 'the OpenSSH client config to edit', '~/.ssh/config')
      .option('-y, --yes', 'do not ask for confirmation (required without a terminal)')
      .option('--dry-run', 'print what the file would become; change nothing')
      .option('--remove', 'take the coder-mesh block out of the file')
      .action(async (flags: ConfigSshFlags) => {
        const file = resolve(expandHome(flags.sshConfigFile))
        const before = await readConfig(file)
        // A malformed block is refused before anything else happens.
        findBlock(before, file)

        let after: string
        let summary: string
        if (flags.remove === true) {
          after = removeBlock(before, file)
          summary = `Removed the coder-mesh block from ${file}.`
        } else {
          const names = await workspaceNames()
          const explicitDir = process.env[ENV_CONFIG_DIR] !== undefined ? configDir() : undefined
          const block = renderBlock({
            binary: cliBinary(),
            configDir: explicitDir === undefined ? undefined : resolve(explicitDir),
            workspaces: names,
          })
          after = replaceBlock(before, file, block)
          const hosts = names.map((n) => `${HOST_PREFIX}${n}`).join(', ')
          summary =
            `Updated ${file}: ${HOST_PREFIX}* for every workspace of yours` +
            (names.length > 0 ? ` (now ${printable(hosts)})` : '') +
            `.\nTry: ssh ${HOST_PREFIX}${names[0] ?? 'NAME'}`
        }

        if (flags.dryRun === true) {
          process.stdout.write(after)
          return
        }
        if (after === before) {
          process.stderr.write(`${file} is already up to date.\n`)
          return
        }
        if (flags.yes !== true) {
          if (!canPrompt()) {
            throw new MeshError(
              'MESH_BAD_ARGUMENT',
              `config-ssh edits ${file}: pass -y to confirm (or --dry-run to see the result).`,
            )
          }
          if (!(await confirm(`Edit ${file}?`))) {
            throw new MeshError('MESH_BAD_ARGUMENT', 'Canceled.')
          }
        }
        await writeConfig(file, after)
        process.stderr.write(`${summary}\n`)
      }),
    'coder-mesh config-ssh -y && ssh coder-mesh.dev',
    'coder-mesh config-ssh --dry-run',
    'coder-mesh config-ssh --ssh-config-file ~/.ssh/config.d/coder-mesh -y',
  )
}
