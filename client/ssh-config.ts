/**
 * The block `coder-mesh config-ssh` keeps in an OpenSSH client config: the
 * text between a start and an end marker line belongs to us and is
 * rewritten on every run; everything outside it is the user's and is never
 * touched. A file whose markers are out of order, duplicated or half
 * missing is refused as it is: guessing which lines are ours could delete
 * the user's own Host entries.
 *
 * Texts here are the file's bytes read as latin1, one character a byte, so
 * the user's lines go back byte for byte whatever their encoding (invalid
 * UTF-8 included); the block's own lines are turned into that form by
 * `asBytes` before they go in.
 */
import { MeshError } from '../sdk/errors.ts'

export const BLOCK_START = '# ------------START-CODER-MESH------------'
export const BLOCK_END = '# -------------END-CODER-MESH-------------'

/** Where the managed block sits, as 0-based line indexes (end inclusive). */
export type BlockPlace = { kind: 'none' } | { kind: 'found'; start: number; end: number }

/**
 * Splits a config file into lines at LF. Each line keeps a CR it ends
 * with, so files with CRLF (or mixed) endings come back as they were. A
 * trailing newline does not make an extra empty line.
 */
function splitLines(text: string): string[] {
  if (text === '') return []
  const lines = text.split('\n')
  if (lines.at(-1) === '') lines.pop()
  return lines
}

/** True when `line` is `marker`, allowing blanks around it (CR, editors' indentation). */
function isMarker(line: string, marker: string): boolean {
  return line.trim() === marker
}

/** The line ending the block's own lines get: CRLF when the file's first line has one. */
function lineEnding(text: string): string {
  return /^[^\n]*\r\n/.test(text) ? '\r' : ''
}

/** `line` (any Unicode) as its UTF-8 bytes, one character a byte, to join a file's text. */
export function asBytes(line: string): string {
  return Buffer.from(line, 'utf8').toString('latin1')
}

function lineList(indexes: number[]): string {
  return indexes.map((i) => i + 1).join(', ')
}

/** Finds the managed block; MESH_SSH_CONFIG_MALFORMED when its markers do not pair up. */
export function findBlock(text: string, file: string): BlockPlace {
  const lines = splitLines(text)
  const starts: number[] = []
  const ends: number[] = []
  lines.forEach((line, i) => {
    if (isMarker(line, BLOCK_START)) starts.push(i)
    if (isMarker(line, BLOCK_END)) ends.push(i)
  })

  if (starts.length === 0 && ends.length === 0) return { kind: 'none' }
  const [start] = starts
  const [end] = ends
  if (starts.length === 1 && ends.length === 1 && start !== undefined && end !== undefined) {
    if (start < end) return { kind: 'found', start, end }
  }

  const counts =
    `${starts.length} start marker${starts.length === 1 ? '' : 's'}` +
    (starts.length > 0 ? ` (line ${lineList(starts)})` : '') +
    `, ${ends.length} end marker${ends.length === 1 ? '' : 's'}` +
    (ends.length > 0 ? ` (line ${lineList(ends)})` : '')
  const order =
    starts.length === 1 && ends.length === 1 ? '; the end marker comes before the start' : ''
  throw new MeshError(
    'MESH_SSH_CONFIG_MALFORMED',
    `The coder-mesh block in ${file} is malformed: ${counts}${order}. ` +
      'Fix or remove the marker lines by hand (the file was left unchanged), then run ' +
      'config-ssh again.',
  )
}

/**
 * `text` with the managed block replaced by `block` (lines without the
 * markers), or added at the end when there is none.
 */
export function replaceBlock(text: string, file: string, block: string[]): string {
  const place = findBlock(text, file)
  const cr = lineEnding(text)
  const lines = splitLines(text)
  const managed = [BLOCK_START, ...block, BLOCK_END].map((line) => asBytes(line) + cr)

  let out: string[]
  if (place.kind === 'found') {
    out = [...lines.slice(0, place.start), ...managed, ...lines.slice(place.end + 1)]
  } else {
    // A blank line between the user's last entry and ours, for the eye.
    const gap = lines.length > 0 && lines.at(-1)?.trim() !== '' ? [cr] : []
    out = [...lines, ...gap, ...managed]
  }
  return out.join('\n') + '\n'
}

/** `text` with the managed block taken out; unchanged when there is none. */
export function removeBlock(text: string, file: string): string {
  const place = findBlock(text, file)
  if (place.kind === 'none') return text
  const lines = splitLines(text)
  const before = lines.slice(0, place.start)
  const after = lines.slice(place.end + 1)
  // The blank line replaceBlock put before a block at the end goes with it.
  if (after.length === 0 && before.length > 0 && before.at(-1)?.trim() === '') before.pop()
  const out = [...before, ...after]
  return out.length === 0 ? '' : out.join('\n') + '\n'
}

/**
 * `word` quoted for the POSIX shell that OpenSSH runs a ProxyCommand with
 * (`/bin/sh -c "exec ..."`): single quotes, each `'` as `'\''`. OpenSSH
 * first expands `%` tokens in the whole line, so a literal `%` is doubled.
 */
export function proxyCommandWord(word: string): string {
  const quoted = /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`
  return quoted.replace(/%/g, '%%')
}

export interface BlockInit {
  /** The CLI to run as ProxyCommand (an absolute path). */
  binary: string
  /** The CLI's config folder, when it is not the default one. */
  configDir?: string
  /** Workspace names, for entries that shells complete `ssh coder-mesh.<TAB>` from. */
  workspaces: string[]
}

export const HOST_PREFIX = 'coder-mesh.'

/** The lines of the managed block, between its markers. */
export function renderBlock(init: BlockInit): string[] {
  for (const [what, path] of [
    ['The coder-mesh binary path', init.binary],
    ['The config folder', init.configDir ?? ''],
  ] as const) {
    // A line break would end the ProxyCommand line and start a new option.
    if (/[\r\n\0]/.test(path)) {
      throw new MeshError(
        'MESH_BAD_ARGUMENT',
        `${what} contains a line break, which an SSH config line cannot carry: ` +
          `${JSON.stringify(path)}. Use a folder without one.`,
      )
    }
  }
  const command = [proxyCommandWord(init.binary)]
  if (init.configDir !== undefined) {
    command.push('--global-config', proxyCommandWord(init.configDir))
  }
  command.push('ssh', '--stdio', '%h')

  const names = [...new Set(init.workspaces)].sort()
  const hosts = [`${HOST_PREFIX}*`, ...names.map((name) => `${HOST_PREFIX}${name}`)]
  return [
    '# Written by `coder-mesh config-ssh`: changes inside this block are lost when it runs',
    '# again. The wildcard also serves workspaces created later; the names are there for',
    '# shells that complete `ssh coder-mesh.<TAB>` from this file.',
    `Host ${hosts.join(' ')}`,
    `  ProxyCommand ${command.join(' ')}`,
    // The agent is authenticated before SSH starts: the coordinator names
    // its libp2p peer id and the Noise handshake proves it. A known_hosts
    // entry would add nothing but a warning when a workspace is rebuilt.
    '  StrictHostKeyChecking no',
    '  UserKnownHostsFile /dev/null',
    '  LogLevel ERROR',
  ]
}
