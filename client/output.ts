/**
 * What commands print: aligned tables for people, `-o json` for scripts.
 * Results go to stdout; prompts, progress and errors to stderr.
 */
import { Option } from 'commander'

export type OutputFormat = 'table' | 'json'

export const OUTPUT_FORMATS: readonly OutputFormat[] = ['table', 'json']

/** The `-o, --output` option every listing takes. */
export function outputOption(): Option {
  return new Option('-o, --output <format>', 'output format')
    .choices(OUTPUT_FORMATS)
    .default('table')
}

/** Terminal columns a string takes: wide (CJK, emoji) characters count twice. */
export function displayWidth(text: string): number {
  let width = 0
  for (const ch of text) {
    const cp = ch.codePointAt(0) ?? 0
    if (cp < 0x20 || (cp >= 0x300 && cp <= 0x36f) || cp === 0x200d) continue
    width += isWide(cp) ? 2 : 1
  }
  return width
}

function isWide(cp: number): boolean {
  return (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1faff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  )
}

/**
 * Characters a terminal acts on rather than shows: C0 but tab (made a
 * space), DEL, C1, and the bidirectional marks, overrides and isolates that
 * reorder what is shown.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g

/**
 * `text` safe to print on a terminal: a tab becomes a space, and every other
 * control character (newline, ESC, C1, bidi overrides) a visible escape,
 * `\n` or `\u001b`, so a server-provided string can neither break a line
 * of a table nor send the terminal a command.
 */
export function printable(text: string): string {
  return text.replace(/\t/g, ' ').replace(CONTROL, (ch) => {
    if (ch === '\n') return '\\n'
    if (ch === '\r') return '\\r'
    return '\\u' + (ch.codePointAt(0) ?? 0).toString(16).padStart(4, '0')
  })
}

/**
 * A borderless table: a header row, then one row per item, columns padded
 * to the widest cell and separated by three spaces. No trailing spaces.
 * Cells pass through `printable`: one line each, no terminal commands.
 */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const all = [headers, ...rows].map((row) => row.map(printable))
  const widths = headers.map((_, i) => Math.max(...all.map((row) => displayWidth(row[i] ?? ''))))
  const lines = all.map((row) =>
    headers
      .map((_, i) => {
        const cell = row[i] ?? ''
        return cell + ' '.repeat((widths[i] ?? 0) - displayWidth(cell))
      })
      .join('   ')
      .trimEnd(),
  )
  return lines.join('\n') + '\n'
}

/** Writes to stdout and waits while it is full, so large output keeps backpressure. */
export async function write(text: string): Promise<void> {
  if (!process.stdout.write(text)) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        process.stdout.off('drain', done)
        process.stdout.off('error', done)
        resolve()
      }
      process.stdout.once('drain', done)
      process.stdout.once('error', done)
    })
  }
}

export function writeJson(value: unknown): Promise<void> {
  return write(JSON.stringify(value, null, 2) + '\n')
}

/**
 * Prints a listing: JSON of the API objects, or a table built from them;
 * `empty` is printed instead of a table with no rows.
 */
export async function writeListing<T>(
  format: OutputFormat,
  items: readonly T[],
  table: { headers: readonly string[]; row: (item: T) => string[]; empty: string },
): Promise<void> {
  if (format === 'json') return writeJson(items)
  if (items.length === 0) return write(table.empty + '\n')
  return write(formatTable(table.headers, items.map(table.row)))
}

/** "just now", "5m ago", "3h ago", "2d ago"; "—" for a missing or bad date. */
export function timeAgo(iso: string | undefined, now: number = Date.now()): string {
  if (iso === undefined) return '—'
  const then = Date.parse(iso)
  if (Number.isNaN(then)) return '—'
  const seconds = Math.max(0, Math.round((now - then) / 1000))
  if (seconds < 10) return 'just now'
  if (seconds < 60) return `${seconds}s ago`
  const minutes = Math.floor(seconds / 60)
  if (minutes < 60) return `${minutes}m ago`
  const hours = Math.floor(minutes / 60)
  if (hours < 48) return `${hours}h ago`
  return `${Math.floor(hours / 24)}d ago`
}

/** Writes a line to stderr: progress and notices, never results. */
export function notice(text: string): void {
  process.stderr.write(text + '\n')
}
