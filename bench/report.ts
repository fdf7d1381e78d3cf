/**
 * The bench's output: one row per figure, printed as a table (cli-table3)
 * and written as Markdown to bench/RESULTS.md. A row whose part could not
 * run here (sshd not installed, a feature coder-mesh lacks) stays in the
 * table as missing, with the reason, instead of failing the bench.
 */
import Table from 'cli-table3'
import type { Machine, Summary } from './stats.ts'

export interface Row {
  section: string
  figure: string
  unit: string
  /** Undefined: not measured (see `missing`). */
  value?: Summary
  /** What the figure is compared with, measured in the same run. */
  anchor?: { name: string; value?: Summary }
  /** Why the row has no value. */
  missing?: string
  /** Extra words for the reader (cipher, what was included). */
  note?: string
}

export interface Target {
  /** The issue's words. */
  target: string
  /** What was measured against it. */
  measured: string
  /** Undefined: could not be judged in this run. */
  met?: boolean
  /**
   * How far the figure is from the target's line, as a factor oriented so
   * that above 1 is better than the line: 0.5 is "needs twice as much".
   */
  margin?: number
}

/** A target's margin in words: `1.40× to spare`, `short by 1.39×`. */
export function marginText(margin: number | undefined): string {
  if (margin === undefined || !Number.isFinite(margin) || margin <= 0) return ''
  return margin >= 1 ? `${margin.toFixed(2)}× to spare` : `short by ${(1 / margin).toFixed(2)}×`
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return '–'
  if (Math.abs(x) >= 100) return x.toFixed(0)
  if (Math.abs(x) >= 10) return x.toFixed(1)
  return x.toFixed(2)
}

export function formatSummary(s: Summary | undefined, unit = ''): string {
  if (s === undefined) return 'missing'
  const u = unit === '' ? '' : ` ${unit}`
  if (s.n <= 1 || s.min === s.max) return `${fmt(s.median)}${u}`
  return `${fmt(s.median)}${u} (${fmt(s.min)}–${fmt(s.max)})`
}

/** value ÷ anchor, as text; '–' when either is missing. */
export function ratioText(row: Row): string {
  const v = row.value?.median
  const a = row.anchor?.value?.median
  if (v === undefined || a === undefined || !Number.isFinite(v) || !Number.isFinite(a) || a === 0)
    return '–'
  return `${(v / a).toFixed(2)}×`
}

function cells(row: Row): string[] {
  return [
    row.figure,
    row.value === undefined ? `missing: ${row.missing ?? '?'}` : formatSummary(row.value, row.unit),
    row.anchor === undefined
      ? ''
      : `${row.anchor.name}: ${formatSummary(row.anchor.value, row.unit)}`,
    ratioText(row),
  ]
}

export function printTable(rows: readonly Row[]): void {
  let section = ''
  const table = new Table({
    head: ['figure', 'median (min–max)', 'anchor, same run', 'ratio'],
    wordWrap: true,
    colWidths: [50, 30, 40, 8],
    wrapOnWordBoundary: true,
    // Plain text: the table also goes to logs and CI output.
    style: { head: [], border: [] },
  })
  for (const row of rows) {
    if (row.section !== section) {
      section = row.section
      table.push([{ colSpan: 4, content: section }])
    }
    const [figure = '', ...rest] = cells(row)
    table.push([row.note === undefined ? figure : `${figure}\n  (${row.note})`, ...rest])
  }
  console.log(table.toString())
}

export interface ReportInit {
  mode: 'full' | 'quick'
  /** The command line's arguments after `npm run bench --`. */
  args: string[]
  date: Date
  machine: Machine
  /** Load averages when the bench ended. */
  loadAfter: [number, number, number]
  durationSeconds: number
  rows: readonly Row[]
  targets: readonly Target[]
  /** Paragraphs on how the figures were taken. */
  method: readonly string[]
}

/** The "full run" section of RESULTS.md, as Markdown. */
export function markdownReport(init: ReportInit): string {
  const m = init.machine
  const load = (l: number[]): string => l.map((x) => x.toFixed(2)).join(', ')
  const lines = [
    `Run: \`npm run bench${init.args.length > 0 ? ` -- ${init.args.join(' ')}` : ''}\`, ` +
      `${init.date.toISOString().replace(/\.\d+Z$/, 'Z')}, ${Math.round(init.durationSeconds)} s.`,
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB.toFixed(1)} GiB, Linux ${m.kernel}, ` +
      `Node ${m.node}. Load average (1, 5, 15 min) ${load(m.load)} at the start, ` +
      `${load(init.loadAfter)} at the end.`,
    '',
    'Each figure is the median of its runs, with min–max in brackets; the ratio is',
    'median ÷ anchor median, both from this run.',
    '',
    '| section | figure | median (min–max) | anchor, same run | ratio | note |',
    '| --- | --- | ---: | --- | ---: | --- |',
  ]
  for (const row of init.rows) {
    const [figure, value, anchor, ratio] = cells(row).map((c) => c.replaceAll('|', '\\|'))
    lines.push(
      `| ${row.section} | ${figure} | ${value} | ${anchor} | ${ratio} | ${row.note ?? ''} |`,
    )
  }
  lines.push('', '| target | measured | met | by how much |', '| --- | --- | --- | --- |')
  for (const t of init.targets) {
    const met = t.met === undefined ? 'not judged' : t.met ? 'yes' : 'no'
    lines.push(`| ${t.target} | ${t.measured} | ${met} | ${marginText(t.margin)} |`)
  }
  lines.push('', ...init.method.flatMap((p) => [p, '']))
  return lines.join('\n')
}
