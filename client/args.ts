/**
 * Pure helpers for command-line arguments: no I/O, so they are cheap to load
 * and easy to test.
 */
import { constants } from 'node:os'
import { MeshError } from '../sdk/errors.ts'

/** The SSH host alias prefix that `config-ssh` writes: `coder-mesh.NAME`. */
export const SSH_HOST_PREFIX = 'coder-mesh.'

/**
 * Parses `--parameter k=v` values into a record. The value may itself hold
 * `=`; the key may not be empty. A key given twice keeps its last value.
 */
export function parseParameters(values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const value of values) {
    const [key, parameterValue] = parseParameter(value)
    out[key] = parameterValue
  }
  return out
}

export function parseParameter(value: string): [string, string] {
  const eq = value.indexOf('=')
  const key = eq === -1 ? '' : value.slice(0, eq).trim()
  if (eq === -1 || key === '') {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid parameter ${JSON.stringify(value)}: use --parameter NAME=VALUE.`,
    )
  }
  return [key, value.slice(eq + 1)]
}

/**
 * The workspace name in an SSH host name: OpenSSH hands ProxyCommand the
 * alias (`%h`), `coder-mesh.dev`, which names workspace `dev`.
 */
export function workspaceFromHost(host: string): string {
  const lower = host.toLowerCase()
  if (lower.startsWith(SSH_HOST_PREFIX) && lower.length > SSH_HOST_PREFIX.length) {
    return host.slice(SSH_HOST_PREFIX.length)
  }
  return host
}

/**
 * The remote command line from the words after `--`. Like OpenSSH, the words
 * are joined with spaces and the remote shell parses the result, so
 * `ssh dev -- 'exit 7'` and `ssh dev -- exit 7` mean the same.
 */
export function remoteCommand(words: readonly string[]): string | undefined {
  if (words.length === 0) return undefined
  return words.join(' ')
}

/** Normalises the URL given to `login`: scheme defaults to http, no trailing slash. */
export function normalizeServerUrl(input: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(input) ? input : `http://${input}`
  let url: URL
  try {
    url = new URL(withScheme)
  } catch {
    throw new MeshError('MESH_BAD_ARGUMENT', `Invalid server URL ${JSON.stringify(input)}.`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid server URL ${JSON.stringify(input)}: use http:// or https://.`,
    )
  }
  return (url.origin + url.pathname).replace(/\/+$/, '')
}

/**
 * The exit status for a remote process that died of `signal` (`TERM` or
 * `SIGTERM`): 128 + its number, as shells report it; 255 for a signal this
 * platform does not know.
 */
export function signalExitCode(signal: string): number {
  const name = (signal.startsWith('SIG') ? signal : `SIG${signal}`) as NodeJS.Signals
  const number = signalNumbers[name]
  return number === undefined ? 255 : 128 + number
}

const signalNumbers: Partial<Record<string, number>> = constants.signals

/** An exit status as OpenSSH reports it: the low 8 bits (-1 becomes 255, 256 becomes 0). */
export function exitStatusCode(code: number): number {
  return code & 0xff
}
