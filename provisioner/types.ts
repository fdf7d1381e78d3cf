/**
 * The provisioner's contract with the coordinator (and `provisionerd`).
 */
import type { Transition } from '../sdk/api-types.ts'

export interface ProvisionFile {
  path: string
  content: Buffer
}

/** One line of build output. */
export interface ProvisionLogLine {
  source: 'stdout' | 'stderr' | 'provisioner'
  text: string
}

export interface ProvisionJob {
  buildId: string
  transition: Transition
  /** The template version's files, written into a fresh working directory. */
  files: ProvisionFile[]
  /** Values for TF_VAR_<name>, both coder_mesh_* and template parameters. */
  variables: Record<string, string>
  /** Names of variables whose values must never be logged. */
  sensitive: string[]
  /** terraform.tfstate from the previous build of this workspace, if any. */
  state?: Buffer
  /** Parent folder for working directories; each build gets its own inside. */
  workRoot: string
}

export interface ProvisionResult {
  ok: boolean
  /** terraform.tfstate after the run, to keep for the next build. */
  state?: Buffer
  /** One line saying why the build failed. */
  error?: string
}

export interface ProvisionOptions {
  signal?: AbortSignal
  onLog: (line: ProvisionLogLine) => void
}
