/**
 * Just enough of Terraform's state format (version 4) to tell whether a
 * state records anything and which of two states of a workspace is newer.
 */

export interface StateSummary {
  serial: number
  lineage: string
  /** Managed resources with at least one instance: what exists because of it. */
  resources: number
}

interface RawState {
  serial?: unknown
  lineage?: unknown
  resources?: unknown
}

interface RawResource {
  mode?: unknown
  instances?: unknown
}

/**
 * The state's serial, lineage and resource count; `null` for an empty one
 * (Terraform leaves an empty file when it records nothing), undefined when
 * it is not a state at all.
 */
export function summarizeState(state: Buffer | undefined): StateSummary | null | undefined {
  if (state === undefined || state.toString('utf8').trim() === '') return null
  let raw: RawState
  try {
    raw = JSON.parse(state.toString('utf8')) as RawState
  } catch {
    return undefined
  }
  if (typeof raw !== 'object' || raw === null || typeof raw.serial !== 'number') return undefined
  if (raw.resources !== undefined && !Array.isArray(raw.resources)) return undefined
  const resources = ((raw.resources ?? []) as RawResource[]).filter(
    (r) =>
      typeof r === 'object' &&
      r !== null &&
      r.mode !== 'data' &&
      (!Array.isArray(r.instances) || r.instances.length > 0),
  ).length
  return {
    serial: raw.serial,
    lineage: typeof raw.lineage === 'string' ? raw.lineage : '',
    resources,
  }
}

/**
 * Whether the state records no resources: absent, empty, or a state whose
 * resources are all gone. A state that cannot be read counts as recording
 * some: nobody can tell what it holds.
 */
export function stateIsEmpty(state: Buffer | undefined): boolean {
  const summary = summarizeState(state)
  return summary === null || (summary !== undefined && summary.resources === 0)
}

/**
 * Whether `candidate` (what a build's terraform left) should replace
 * `stored`: it is a state, and `stored` is none, of another lineage, or of a
 * lower serial. Terraform raises the serial with every change it saves.
 */
export function isNewerState(candidate: Buffer | undefined, stored: Buffer | undefined): boolean {
  const next = summarizeState(candidate)
  if (next === null || next === undefined) return false
  const current = summarizeState(stored)
  if (current === null || current === undefined) return true
  return next.lineage !== current.lineage || next.serial > current.serial
}
