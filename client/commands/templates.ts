/**
 * `coder-mesh templates push|list|versions`.
 */
import type { Command } from 'commander'
import { readdir, readFile, realpath, stat } from 'node:fs/promises'
import { join, relative, resolve, sep } from 'node:path'
import type { TemplateFile } from '../../sdk/api-types.ts'
import { MeshError } from '../../sdk/errors.ts'
import { assertName, nameProblem } from '../../sdk/names.ts'
import { examples } from '../cli.ts'
import { outputOption, timeAgo, write, writeListing, type OutputFormat } from '../output.ts'
import { apiClient } from '../session.ts'
import { PACKAGE_ROOT } from '../../sdk/paths.ts'

/** Most files a template version may hold (the API's limit). */
export const MAX_TEMPLATE_FILES = 1000

/** Most bytes of files a template version may hold, in all (the API's limit: 10 MiB). */
export const MAX_TEMPLATE_BYTES = 10 * 1024 * 1024

export function registerTemplateCommands(program: Command): void {
  const templates = examples(
    program.command('templates').description('manage templates'),
    'coder-mesh templates push local',
    'coder-mesh templates list',
  )

  examples(
    templates
      .command('push')
      .description('push a folder of Terraform files as a new template version')
      .argument('<name>', 'template name')
      .option(
        '-d, --directory <dir>',
        'folder to push (default: the shipped example of that name, else the current folder)',
      )
      .option('-m, --message <message>', 'a note stored with the version')
      .action(async (name: string, flags: { directory?: string; message?: string }) => {
        assertName('template', name)
        const dir = flags.directory ?? (await defaultTemplateDir(name))
        const files = await readTemplateFiles(dir)
        const api = await apiClient()
        const version = await api.pushTemplate(name, { files, message: flags.message })
        const count = `${files.length} file${files.length === 1 ? '' : 's'}`
        await write(`Template ${name} version ${version.version} pushed (${count})\n`)
      }),
    'coder-mesh templates push local',
    'coder-mesh templates push local -d ./examples/templates/local -m "bigger disk"',
  )

  examples(
    templates
      .command('list')
      .description('list templates')
      .addOption(outputOption())
      .action(async (flags: { output: OutputFormat }) => {
        const api = await apiClient()
        await writeListing(flags.output, await api.templates(), {
          headers: ['NAME', 'ACTIVE VERSION', 'VERSIONS', 'UPDATED'],
          row: (t) => [t.name, String(t.activeVersion), String(t.versions), timeAgo(t.updatedAt)],
          empty: "No templates yet: push one with 'coder-mesh templates push NAME'.",
        })
      }),
    'coder-mesh templates list -o json',
  )

  examples(
    templates
      .command('versions')
      .description("list a template's versions")
      .argument('<name>', 'template name')
      .addOption(outputOption())
      .action(async (name: string, flags: { output: OutputFormat }) => {
        assertName('template', name)
        const api = await apiClient()
        await writeListing(flags.output, await api.templateVersions(name), {
          headers: ['VERSION', 'FILES', 'CREATED BY', 'CREATED', 'MESSAGE'],
          row: (v) => [
            String(v.version),
            String(v.files.length),
            v.createdBy,
            timeAgo(v.createdAt),
            v.message,
          ],
          empty: `Template ${name} has no versions.`,
        })
      }),
    'coder-mesh templates versions local',
  )
}

/**
 * Without -d: the shipped example folder of that name if there is one
 * (examples/templates/NAME), else the current folder.
 */
export async function defaultTemplateDir(name: string): Promise<string> {
  if (nameProblem(name) === undefined) {
    const shipped = join(PACKAGE_ROOT, 'examples', 'templates', name) + sep
    if ((await stat(shipped).catch(() => undefined))?.isDirectory() === true) return shipped
  }
  return process.cwd()
}

/** Whether a path inside a template folder is left out of a push. */
export function isIgnored(relativePath: string, isDir: boolean): boolean {
  const base = relativePath.split('/').pop() ?? relativePath
  if (isDir) return base === '.terraform' || base === '.git'
  return base.includes('.tfstate')
}

/**
 * Every file under `dir`, recursively, as the API wants them: paths relative
 * to `dir` with `/` separators, contents base64. Leaves out `.terraform/`,
 * `.git/` and Terraform state (`*.tfstate*`). Sizes are checked against the
 * API's limits before any file is read, so a huge file is refused at once,
 * by name, without being loaded.
 */
export async function readTemplateFiles(dir: string): Promise<TemplateFile[]> {
  const root = resolve(dir)
  await checkTemplateFolder(dir, root)

  const found: { path: string; full: string; size: number }[] = []
  // Real paths of folders walked so far: a symbolic link back up the tree
  // must not loop.
  const seen = new Set<string>()
  const walk = async (folder: string): Promise<void> => {
    const real = await realpath(folder)
    if (seen.has(real)) return
    seen.add(real)
    const entries = await readdir(folder, { withFileTypes: true })
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    for (const entry of entries) {
      const full = join(folder, entry.name)
      const rel = relative(root, full).split(sep).join('/')
      if (entry.isDirectory() && isIgnored(rel, true)) continue
      if (!entry.isDirectory() && !entry.isSymbolicLink() && !entry.isFile()) continue
      // Follows symbolic links to what they point at; a broken one is skipped.
      const info = await stat(full).catch(() => undefined)
      if (info === undefined) continue
      if (info.isDirectory()) {
        if (!isIgnored(rel, true)) await walk(full)
      } else if (info.isFile() && !isIgnored(rel, false)) {
        if (found.length >= MAX_TEMPLATE_FILES) {
          throw new MeshError(
            'MESH_BAD_ARGUMENT',
            `Template folder ${dir} holds more than ${MAX_TEMPLATE_FILES} files.`,
          )
        }
        if (info.size > MAX_TEMPLATE_BYTES) {
          throw new MeshError(
            'MESH_BAD_ARGUMENT',
            `File ${join(dir, rel)} is ${formatBytes(info.size)}: a template may hold at most ` +
              `${formatBytes(MAX_TEMPLATE_BYTES)} of files in all.`,
          )
        }
        found.push({ path: rel, full, size: info.size })
      }
    }
  }
  await walk(root)

  if (found.length === 0) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Template folder ${dir} has no files to push.`)
  }
  const total = found.reduce((sum, f) => sum + f.size, 0)
  if (total > MAX_TEMPLATE_BYTES) {
    const largest = [...found]
      .sort((a, b) => b.size - a.size)
      .slice(0, 3)
      .map((f) => `${f.path} ${formatBytes(f.size)}`)
      .join(', ')
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Template folder ${dir} holds ${formatBytes(total)} of files: a template may hold at most ` +
        `${formatBytes(MAX_TEMPLATE_BYTES)} in all (largest: ${largest}).`,
    )
  }

  const files: TemplateFile[] = []
  for (const f of found) {
    files.push({ path: f.path, content: (await readFile(f.full)).toString('base64') })
  }
  return files
}

/** MESH_BAD_ARGUMENT unless `dir` is a folder: says whether it is missing, a file or unreadable. */
async function checkTemplateFolder(dir: string, root: string): Promise<void> {
  let info
  try {
    info = await stat(root)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'ENOTDIR'
          ? 'does not exist (a part of its path is a file)'
          : code === 'EACCES' || code === 'EPERM'
            ? 'cannot be read: permission denied'
            : `cannot be read: ${(err as Error).message}`
    throw new MeshError('MESH_BAD_ARGUMENT', `Template folder ${dir} ${why}.`)
  }
  if (!info.isDirectory()) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `${dir} is a file, not a folder: pass the folder that holds the template's .tf files.`,
    )
  }
}

/** "512 bytes", "3.2 KiB", "10 MiB", "10.5 MiB", "1.5 GiB", "200 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} byte${bytes === 1 ? '' : 's'}`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes / 1024
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  const rounded = Number.isInteger(value) || value >= 100 ? Math.round(value) : value.toFixed(1)
  return `${rounded} ${units[unit]}`
}
