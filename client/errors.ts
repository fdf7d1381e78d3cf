/**
 * How the CLI reports failures: one line on stderr, `error: <message> (<code>)`,
 * then a detail line only when asked for (--verbose or
 * CODER_MESH_LOG_LEVEL=debug). Stack traces appear only at the debug level.
 */
import { isMeshError, MeshError } from '../sdk/errors.ts'
import { envLogLevel } from '../sdk/config.ts'
import { printable } from './output.ts'

export interface ReportOptions {
  verbose?: boolean
}

/** The lines printed for `err`, without trailing newlines. */
export function errorLines(err: unknown, options: ReportOptions = {}): string[] {
  const debug = envLogLevel() === 'debug' || envLogLevel() === 'trace'
  const verbose = options.verbose === true || debug
  const lines: string[] = []

  if (isMeshError(err)) {
    lines.push(`error: ${oneLine(withValidations(err))} (${err.code})`)
    if (verbose && err.detail !== undefined && err.detail !== '') {
      lines.push(`  detail: ${oneLine(err.detail)}`)
    }
    const hint = hintFor(err)
    if (verbose && hint !== undefined) lines.push(`  hint: ${hint}`)
  } else if (err instanceof Error) {
    lines.push(`error: ${oneLine(err.message)}`)
  } else {
    lines.push(`error: ${oneLine(String(err))}`)
  }

  if (debug && err instanceof Error && err.stack !== undefined) {
    lines.push(...err.stack.split('\n').slice(1))
  }
  return lines
}

/** Prints `err` to stderr; returns the exit status to use (always 1). */
export function reportError(err: unknown, options: ReportOptions = {}): number {
  process.stderr.write(errorLines(err, options).join('\n') + '\n')
  return 1
}

/**
 * Validation messages the server attached (e.g. which parameter is
 * missing), folded into the message when it does not already say them.
 */
function withValidations(err: MeshError): string {
  const extra = (err.validations ?? [])
    .filter((v) => !err.message.includes(v.detail))
    .map((v) => (v.field === '' ? v.detail : `${v.field}: ${v.detail}`))
  if (extra.length === 0) return err.message
  return `${err.message.replace(/\.$/, '')}: ${extra.join('; ')}`
}

function hintFor(err: MeshError): string | undefined {
  if (err.code === 'MESH_UNAUTHENTICATED') {
    return "your session may have expired: run 'coder-mesh login URL'"
  }
  if (err.code === 'MESH_NOT_A_COORDINATOR') {
    return "check the URL: use the one 'coder-mesh server' prints as listening"
  }
  return undefined
}

/** One line, with control characters (a server's, or a file name's) made visible. */
function oneLine(text: string): string {
  return printable(text.replace(/\s*[\r\n]\s*/g, ' ').trim())
}

/** The error for a missing session. */
export function notLoggedIn(): MeshError {
  return new MeshError('MESH_NOT_LOGGED_IN', "You are not logged in: run 'coder-mesh login URL'.")
}

/** Wraps a failure to reach the agent; MeshErrors (the coordinator's answers) pass as they are. */
export function connectFailed(message: string, cause: unknown): MeshError {
  if (isMeshError(cause)) return cause
  const detail = cause instanceof Error ? cause.message : String(cause)
  return new MeshError('MESH_CONNECT_FAILED', message, { detail, cause })
}
