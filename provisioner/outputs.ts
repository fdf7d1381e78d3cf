/**
 * Template outputs the coordinator acts on, read from a build's Terraform
 * state (format version 4 keeps every root output under `outputs`, with its
 * value). Reading the state the build already hands back costs nothing,
 * where `terraform output -json` would be one more Terraform run per build.
 *
 * - `coder_mesh_startup_script` (string): what the agent runs once per start.
 * - `coder_mesh_startup_script_timeout` (number, seconds): how long it may
 *   run before the agent stops it and reports `start_timeout`.
 */

export const STARTUP_SCRIPT_OUTPUT = 'coder_mesh_startup_script'
export const STARTUP_TIMEOUT_OUTPUT = 'coder_mesh_startup_script_timeout'

/** Largest startup script the coordinator hands out, in UTF-8 bytes. */
export const MAX_STARTUP_SCRIPT_BYTES = 256 * 1024

export interface StartupOutputs {
  /** Empty when the template declares no startup script. */
  script: string
  /** Seconds; undefined for no timeout. */
  timeoutSeconds?: number
  /** Why an output was left out (wrong type, too large), one line each. */
  problems: string[]
}

interface RawOutput {
  value?: unknown
}

/** Root outputs of a state, by name; empty for no state or one that is not JSON. */
export function stateOutputs(state: Buffer | undefined): Record<string, unknown> {
  if (state === undefined) return {}
  let raw: { outputs?: unknown }
  try {
    raw = JSON.parse(state.toString('utf8')) as { outputs?: unknown }
  } catch {
    return {}
  }
  if (typeof raw !== 'object' || raw === null) return {}
  const outputs = raw.outputs
  if (typeof outputs !== 'object' || outputs === null) return {}
  const out: Record<string, unknown> = {}
  for (const [name, entry] of Object.entries(outputs as Record<string, RawOutput>)) {
    if (typeof entry === 'object' && entry !== null) out[name] = entry.value
  }
  return out
}

/** The startup script and its timeout from a state's outputs; bad values are left out, said why. */
export function startupOutputs(state: Buffer | undefined): StartupOutputs {
  const outputs = stateOutputs(state)
  const problems: string[] = []
  let script = ''
  const value = outputs[STARTUP_SCRIPT_OUTPUT]
  if (typeof value === 'string') {
    if (Buffer.byteLength(value) > MAX_STARTUP_SCRIPT_BYTES) {
      problems.push(
        `output ${STARTUP_SCRIPT_OUTPUT} is over ${MAX_STARTUP_SCRIPT_BYTES} bytes; not run`,
      )
    } else {
      script = value
    }
  } else if (value !== undefined && value !== null) {
    problems.push(`output ${STARTUP_SCRIPT_OUTPUT} is not a string; not run`)
  }

  let timeoutSeconds: number | undefined
  const timeout = outputs[STARTUP_TIMEOUT_OUTPUT]
  if (typeof timeout === 'number' && Number.isFinite(timeout) && timeout > 0) {
    timeoutSeconds = timeout
  } else if (timeout !== undefined && timeout !== null && timeout !== 0) {
    problems.push(`output ${STARTUP_TIMEOUT_OUTPUT} is not a positive number of seconds; ignored`)
  }
  return { script, timeoutSeconds, problems }
}
