/**
 * Bundles the CLI (client/main.ts, which also runs the server and the agent)
 * into dist/: our own modules as a few plain JavaScript files, the packages
 * in node_modules left to load as they are. bin/coder-mesh starts the bundle
 * when it is newer than every source file, and the sources otherwise.
 *
 * Why: started from the sources, every run of the CLI loads Node's
 * TypeScript stripper (13 MiB and about a third of the start-up time) and
 * strips and resolves each of our modules one by one; OpenSSH starts the CLI
 * anew for every connection (ProxyCommand), and every workspace runs an
 * agent for as long as it is up.
 *
 *   node scripts/build.ts        (npm install and npm test run it)
 */
import { rm } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const dist = `${root}dist`

let rolldown: typeof import('rolldown')
try {
  rolldown = await import('rolldown')
} catch {
  // An install without dev dependencies: the CLI runs from its sources.
  process.stdout.write('coder-mesh: rolldown is not installed; the CLI will run from its sources\n')
  process.exit(0)
}

await rm(dist, { recursive: true, force: true })
await rolldown.build({
  input: `${root}client/main.ts`,
  platform: 'node',
  // Only our own files (relative imports) are bundled: packages keep their
  // own module graph, native parts and paths, and load from node_modules.
  external: (id) => !id.startsWith('.') && !id.startsWith('/'),
  logLevel: 'warn',
  output: { dir: dist, format: 'esm', sourcemap: true },
})
process.stdout.write('coder-mesh: bundled the CLI into dist/\n')
