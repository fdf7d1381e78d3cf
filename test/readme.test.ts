/**
 * The README's quick start, run as written: the sh block under
 * "## Quick start" in a fresh HOME, as one bash script.
 */
import { execa } from 'execa'
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { processesUnder, removeTree, ROOT, waitFor } from './harness.ts'

async function quickStart(): Promise<string> {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
  const section = readme.split('## Quick start')[1] ?? ''
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1]
  if (block === undefined) throw new Error('README has no quick start block')
  return block
}

describe('README quick start', () => {
  let home: string | undefined

  afterAll(async () => {
    if (home === undefined) return
    for (const pid of await processesUnder(home)) process.kill(pid, 'SIGKILL')
    await removeTree(home)
  })

  it('should work as written on a fresh HOME', async () => {
    home = await mkdtemp(join(tmpdir(), 'coder-mesh-readme-'))
    const script = [
      'set -euo pipefail',
      // The server is the script's background job; end it with the script.
      "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
      await quickStart(),
    ].join('\n')

    const r = await execa('bash', ['-c', script], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LANG: 'C.UTF-8' },
      extendEnv: false,
      reject: false,
      timeout: 240_000,
    })
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0)
    expect(r.stdout).toMatch(/hello from the workspace/)
    expect(r.stdout).toMatch(/Linux/)

    const dataDir = join(home, '.local', 'share', 'coder-mesh')
    await waitFor('no agent left', async () => (await processesUnder(dataDir)).length === 0)
  })
})
