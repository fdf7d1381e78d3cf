/**
 * `coder-mesh templates push|list|versions`.
 */
import type { Command } from 'commander'
import { readdir, readFile, realpath, stat } from 'node:fs/promises'
import { join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { TemplateFile } from '../../sdk/api-types.ts'
import { MeshError } from '../../sdk/errors.ts'
import { assertName, nameProblem } from '../../sdk/names.ts'
import { examples } from '../cli.ts'
import { outputOption, timeAgo, write, writeListing, type OutputFormat } from '../output.ts'
import { apiClient } from '../session.ts'

/** Most files a template version may hold (the API's limit). */
export const MAX_TEMPLATE_FILES = 1000

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
    'coder-mesh templates push docker -d ./templates/docker -m "bigger disk"',
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
    const shipped = fileURLToPath(new URL(`../../examples/templates/${name}/`, import.meta.url))
    if (await isDirectory(shipped)) return shipped
  }
  return process.cwd()
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory()
  } catch {
    return false
  }
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
 * `.git/` and Terraform state (`*.tfstate*`).
 */
export async function readTemplateFiles(dir: string): Promise<TemplateFile[]> {
  const root = resolve(dir)
  if (!(await isDirectory(root))) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Template folder ${dir} does not exist.`)
  }

  const files: TemplateFile[] = []
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
      // Follow symbolic links to what they point at.
      const kind = entry.isSymbolicLink() ? await stat(full).catch(() => undefined) : entry
      if (kind === undefined) continue
      if (kind.isDirectory()) {
        if (!isIgnored(rel, true)) await walk(full)
      } else if (kind.isFile() && !isIgnored(rel, false)) {
        if (files.length >= MAX_TEMPLATE_FILES) {
          throw new MeshError(
            'MESH_BAD_ARGUMENT',
            `Template folder ${dir} holds more than ${MAX_TEMPLATE_FILES} files.`,
          )
        }
        files.push({ path: rel, content: (await readFile(full)).toString('base64') })
      }
    }
  }
  await walk(root)

  if (files.length === 0) {
    throw new MeshError('MESH_BAD_ARGUMENT', `Template folder ${dir} has no files to push.`)
  }
  return files
}
