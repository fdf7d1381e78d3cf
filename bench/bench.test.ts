/**
 * `npm run bench -- --quick` as a user would run it: it must print every
 * figure with its anchor and ratio, and write them, with each target judged,
 * to its results file. Figures are not judged here: speed is for reading,
 * never asserted. Runs after the main suite (bench/vitest.config.ts), alone
 * on the machine, since it starts sshd, a coordinator, agents and a hundred
 * simulated agents of its own.
 */
import { execa } from 'execa'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ROOT } from '../test/harness.ts'

/** A measured value: `126 MiB (125–126)`, `61.5 ms`, `0.50 % core`. */
const VALUE = /^\d[\d.]* (MiB|ms|s|MB\/s|% core)( \(\d[\d.]*–\d[\d.]*\))?$/
const RATIO = /^\d+\.\d\d×$/

/** Each figure of the quick run, by the start of its name, and its anchor's name. */
const FIGURES: Array<[section: string, figure: string, anchor: string | undefined]> = [
  ['footprint', 'idle agent RSS', 'bare Node'],
  ['footprint', 'CLI cold start (`coder-mesh --version`)', '`node -e 0`'],
  ['ssh', '`ssh coder-mesh.bench true` (ProxyCommand, cold)', 'sshd'],
  ['ssh', '`ssh coder-mesh.bench true` with `connect` running', 'sshd'],
  ['ssh', 'ssh bulk `head -c ', 'sshd'],
  ['forward, one stream', 'raw loopback TCP', undefined],
  ['forward, one stream', '`ssh -L` (OpenSSH)', 'raw'],
  ['forward, one stream', '`port-forward`, direct (tcp)', '`ssh -L`'],
  ['forward, one stream', 'forward, direct (webrtc)', '`ssh -L`'],
  ['forward, one stream', '`port-forward`, relayed', 'direct (tcp)'],
  ['100 connections at once', 'total throughput, 1 MiB each: `ssh -L`', 'raw'],
  ['100 connections at once', 'total throughput, 1 MiB each: direct', '`ssh -L`'],
  ['100 connections at once', '64 B request/response p99: `ssh -L`', 'raw'],
  ['100 connections at once', '64 B request/response p99: direct', '`ssh -L`'],
  ['100 connections at once', '64 B request/response p99: relayed', '`ssh -L`'],
  ['control plane', '100 agents: time to connect all', 'one agent alone'],
  ['control plane', '100 agents: coordinator RSS', 'no simulated agents'],
  ['control plane', '100 agents: coordinator CPU, held', 'no simulated agents'],
  ['control plane', '100 agents: workspace list p50', 'no simulated agents'],
  ['control plane', '100 agents: workspace list p99', 'no simulated agents'],
]

const TARGETS = [
  'one forwarded stream, direct: at least `ssh -L`',
  'relayed: at least half of direct',
  '`ssh coder-mesh.NAME true` no slower than `ssh` to sshd',
  'the same, with `connect` running',
  'idle agent under 60 MiB',
  '10,000 simulated agents within 2 GiB',
]

/** The cells of a Markdown table row, `\|` kept inside its cell. */
function cells(line: string): string[] {
  return line
    .slice(1, -1)
    .split(/(?<!\\)\|/)
    .map((cell) => cell.trim().replaceAll('\\|', '|'))
}

describe('npm run bench -- --quick', () => {
  let dir: string
  let stdout: string
  let results: string
  /** The bench's OpenSSH folders (private keys inside) in the temp folder before and after. */
  const sshDirs = async (): Promise<string[]> =>
    (await readdir(tmpdir())).filter((name) => name.startsWith('coder-mesh-bench-ssh-'))
  let sshDirsBefore: string[]
  let sshDirsAfter: string[]

  beforeAll(async () => {
    sshDirsBefore = await sshDirs()
    dir = await mkdtemp(join(tmpdir(), 'coder-mesh-bench-'))
    const output = join(dir, 'RESULTS.md')
    const run = await execa('npm', ['run', 'bench', '--', '--quick', '--output', output], {
      cwd: ROOT,
      reject: false,
      timeout: 600_000,
    })
    stdout = String(run.stdout)
    if (run.exitCode !== 0) throw new Error(`bench failed (${run.exitCode}): ${run.stderr}`)
    results = await readFile(output, 'utf8')
    sshDirsAfter = await sshDirs()
  }, 660_000)

  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('should write the machine, the date, and each figure with spread, anchor and ratio', () => {
    expect(results).toMatch(/<!-- bench:quick:start -->\nRun: `npm run bench -- --quick`, /)
    expect(results).toMatch(/^Machine: .+, \d+ cores, [\d.]+ GiB, Linux .+, Node v\d+/m)
    expect(results).not.toMatch(/--output/)

    const rows = results
      .split('\n')
      .filter((line) => line.startsWith('| ') && !line.startsWith('| ---'))
      .map(cells)
    for (const [section, figure, anchor] of FIGURES) {
      const row = rows.find((r) => r[0] === section && r[1]?.startsWith(figure))
      expect(row, `${section}: ${figure}`).toBeDefined()
      const [, , value = '', anchorCell = '', ratio = ''] = row ?? []
      expect(value, figure).toMatch(VALUE)
      if (anchor === undefined) continue
      expect(anchorCell.startsWith(`${anchor}: `), `${figure}: ${anchorCell}`).toBe(true)
      expect(anchorCell.slice(anchor.length + 2), figure).toMatch(VALUE)
      expect(ratio, figure).toMatch(RATIO)
    }
    expect(results).not.toMatch(/missing/)
  })

  it('should judge each target: met or not, and by how much', () => {
    for (const target of TARGETS) {
      const row = results.split('\n').find((line) => line.startsWith(`| ${target} |`))
      expect(row, target).toBeDefined()
      const [, measured = '', met = '', margin = ''] = cells(row ?? '|')
      expect(measured, target).toMatch(/\d/)
      expect(met, target).toMatch(/^(yes|no)$/)
      expect(margin, target).toMatch(
        met === 'yes' ? /^\d+\.\d\d× to spare$/ : /^short by \d+\.\d\d×$/,
      )
    }
  })

  it('should leave no throwaway keys behind', () => {
    expect(sshDirsAfter.filter((name) => !sshDirsBefore.includes(name))).toEqual([])
  })

  it('should print the table and the targets', () => {
    expect(stdout).toMatch(/│ figure +│ median \(min–max\) +│ anchor, same run +│ ratio/)
    for (const target of TARGETS) {
      expect(stdout).toContain(`target: ${target}: `)
    }
    expect(stdout).not.toMatch(/missing/)
  })
})
