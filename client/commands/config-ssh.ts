/**
 * `coder-mesh config-ssh`: keeps a managed block in the OpenSSH client
 * config so that `ssh coder-mesh.NAME`, scp, rsync and editors that read
 * ~/.ssh/config reach workspaces through `coder-mesh ssh --stdio`.
 */
import type { Command } from 'commander'
import { randomBytes } from 'node:crypto'
import { chmod, lstat, mkdir, open, readFile, readlink, rename, rm, stat } from 'node:fs/promises'
import { homedir, userInfo } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { configDir, ENV_CONFIG_DIR } from '../../sdk/config.ts'
import { MeshError } from '../../sdk/errors.ts'
import { examples } from '../cli.ts'
import { printable } from '../output.ts'
import { canPrompt, confirm } from '../prompt.ts'
import { apiClient } from '../session.ts'
import { findBlock, HOST_PREFIX, removeBlock, renderBlock, replaceBlock } from '../ssh-config.ts'
import { CODER_MESH_BIN } from '../../sdk/paths.ts'

interface ConfigSshFlags {
  sshConfigFile: string
  yes?: boolean
  dryRun?: boolean
  remove?: boolean
}

/** The CLI's own launcher, which brings the right Node with it. */
export function cliBinary(): string {
  return CODER_MESH_BIN
}

function expandHome(file: string): string {
  return file === '~' || file.startsWith('~/') ? join(homedir(), file.slice(1)) : file
}

/** An SSH client config larger than this is surely not one. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024

function unreadable(file: string, why: string, cause?: unknown): MeshError {
  return new MeshError(
    'MESH_BAD_ARGUMENT',
    `Cannot use ${file} as the SSH config: ${why}. Name another with --ssh-config-file.`,
    { cause },
  )
}

/**
 * Where the config's bytes live: the file itself, or for a symlink (a
 * dotfiles checkout) the file it points to, even when that does not exist
 * yet. Anything but a regular file (a folder, a device, a FIFO that would
 * block) is refused.
 */
async function configTarget(file: string): Promise<string> {
  let target = file
  for (let hops = 0; ; hops++) {
    let info
    try {
      info = await lstat(target)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return target
      throw unreadable(file, (err as Error).message, err)
    }
    if (info.isSymbolicLink()) {
      if (hops >= 40) throw unreadable(file, 'too many levels of symbolic links')
      target = resolve(dirname(target), await readlink(target))
      continue
    }
    if (!info.isFile()) throw unreadable(file, 'it is not a regular file')
    if (info.size > MAX_CONFIG_BYTES) {
      throw unreadable(file, `it is ${info.size} bytes, too large for an SSH config`)
    }
    return target
  }
}

/** The file's bytes as latin1 text (see ssh-config.ts), '' when there is none. */
async function readConfig(target: string, file: string): Promise<string> {
  try {
    return (await readFile(target)).toString('latin1')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return ''
    throw unreadable(file, (err as Error).message, err)
  }
}

/**
 * Writes `text` to `target` through a temporary file renamed over it, so
 * an interrupted run leaves the old file or the new one, never half of one.
 * The file keeps its mode; a new one is private (0600, folder 0700).
 */
async function writeConfig(target: string, text: string): Promise<void> {
  const mode = await stat(target).then(
    (s) => s.mode & 0o777,
    () => 0o600,
  )
  const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`
  try {
    await mkdir(dirname(target), { recursive: true, mode: 0o700 })
    const handle = await open(temp, 'wx', mode)
    try {
      await handle.writeFile(Buffer.from(text, 'latin1'))
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

/**
 * How to run ssh so that it reads `file`. Without -F, OpenSSH reads only the
 * account's own ~/.ssh/config, taking `~` from the password database, never
 * from $HOME: with HOME pointing elsewhere, or any other file, plain `ssh`
 * would not see the file we just wrote.
 */
export function tryCommand(file: string, accountHome = userInfo().homedir): string {
  if (resolve(file) === resolve(accountHome, '.ssh', 'config')) return 'ssh'
  return `ssh -F ${printable(file)}`
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
        const target = await configTarget(file)
        const before = await readConfig(target, file)
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
            `.\nTry: ${tryCommand(file)} ${HOST_PREFIX}${names[0] ?? 'NAME'}`
        }

        if (flags.dryRun === true) {
          process.stdout.write(Buffer.from(after, 'latin1'))
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
        await writeConfig(target, after)
        process.stderr.write(`${summary}\n`)
      }),
    'coder-mesh config-ssh -y && ssh coder-mesh.dev',
    'coder-mesh config-ssh --dry-run',
    'coder-mesh config-ssh --ssh-config-file ~/.ssh/config.d/coder-mesh -y',
  )
}
