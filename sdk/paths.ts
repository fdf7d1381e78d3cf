/**
 * Where the package's own files are (package.json, bin/, examples/), for
 * code that runs both from its source folder and from the bundle in dist/
 * (scripts/build.ts): a path relative to the running module would differ
 * between the two, the package root does not.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const manifest = join(dir, 'package.json')
    if (existsSync(manifest)) {
      const { name } = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }
      if (name === 'coder-mesh') return dir
    }
    const parent = dirname(dir)
    if (parent === dir) throw new Error('coder-mesh: the package root was not found')
    dir = parent
  }
}

/** The folder holding coder-mesh's package.json. */
export const PACKAGE_ROOT: string = findRoot()

/** `<package>/bin/coder-mesh`, the launcher that brings the right Node with it. */
export const CODER_MESH_BIN: string = join(PACKAGE_ROOT, 'bin', 'coder-mesh')

/** The package's version, from its package.json ('0.0.0' when it has none). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as {
    version?: unknown
  }
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0'
}
