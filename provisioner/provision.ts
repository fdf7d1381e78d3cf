/**
 * One build: write the template and state into a fresh working directory,
 * `terraform init`, then `terraform apply` (start, stop) or `terraform
 * destroy` (delete), and read back the state.
 */
import { MeshError } from '../sdk/errors.ts'
import { createRedactor, type Redactor } from './redact.ts'
import { runTerraform, terraformEnv, type RunOutcome } from './terraform.ts'
import type { ProvisionJob, ProvisionLogLine, ProvisionOptions, ProvisionResult } from './types.ts'
import {
  checkBuildId,
  checkFiles,
  keepWorkdirs,
  prepareWorkdir,
  readState,
  removeWorkdir,
  STATE_FILE,
  workdirPath,
} from './workdir.ts'

const COMMON_FLAGS = ['-no-color', '-input=false']

/** Variables whose values are secret whether or not the job says so. */
const ALWAYS_SENSITIVE = ['coder_mesh_agent_token']

/** Terraform's own rule for variable names. */
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/

interface Step {
  name: 'init' | 'apply' | 'destroy'
  args: string[]
}

function steps(job: ProvisionJob): Step[] {
  const main: Step =
    job.transition === 'delete'
      ? { name: 'destroy', args: ['destroy', '-auto-approve', ...COMMON_FLAGS] }
      : { name: 'apply', args: ['apply', '-auto-approve', ...COMMON_FLAGS] }
  return [{ name: 'init', args: ['init', ...COMMON_FLAGS] }, main]
}

function checkVariables(variables: Record<string, string>): void {
  for (const [name, value] of Object.entries(variables)) {
    if (!VARIABLE_NAME.test(name)) {
      throw new MeshError('MESH_BAD_REQUEST', `${JSON.stringify(name)} is not a variable name.`, {
        validations: [{ field: 'variables', detail: `${name}: not a Terraform identifier` }],
      })
    }
    if (value.includes('\0')) {
      throw new MeshError('MESH_BAD_REQUEST', `Variable ${name} contains a NUL byte.`, {
        validations: [{ field: 'variables', detail: `${name}: contains a NUL byte` }],
      })
    }
  }
}

function secretValues(job: ProvisionJob): string[] {
  const names = new Set([...job.sensitive, ...ALWAYS_SENSITIVE])
  const values: string[] = []
  for (const name of names) {
    const value = job.variables[name]
    if (value !== undefined) values.push(value)
  }
  return values
}

function describe(outcome: RunOutcome): string {
  if (outcome.spawnError !== undefined) return `cannot run terraform (${outcome.spawnError})`
  if (outcome.exitCode !== undefined) return `exit status ${outcome.exitCode}`
  if (outcome.signal !== undefined) return `killed by ${outcome.signal}`
  return 'ended for no known reason'
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/**
 * Runs one build. Throws MESH_BAD_REQUEST for a job that cannot be run as
 * given; any other failure is `{ ok: false, error }`, with the details in
 * the log. The result's state is the newest there is: what Terraform left,
 * else the job's own.
 */
export async function provision(
  job: ProvisionJob,
  options: ProvisionOptions,
): Promise<ProvisionResult> {
  checkBuildId(job.buildId)
  checkVariables(job.variables)
  const { files, ignored } = checkFiles(job.files)

  const redactor = createRedactor(secretValues(job))
  const log = (source: ProvisionLogLine['source'], text: string): void => {
    try {
      options.onLog({ source, text: redactor.redact(text) })
    } catch {
      // A failing log consumer must not break the build.
    }
  }

  for (const path of ignored) log('provisioner', `ignoring template file ${path}`)

  const dir = workdirPath(job.workRoot, job.buildId)
  try {
    try {
      await prepareWorkdir(dir, files, job.state)
    } catch (error) {
      const message = `cannot prepare the working directory: ${errorMessage(error)}`
      log('provisioner', message)
      return { ok: false, state: job.state, error: redactor.redact(message) }
    }
    return await run(job, dir, options.signal, log, redactor)
  } finally {
    if (keepWorkdirs()) {
      log('provisioner', `working directory kept: ${dir}`)
    } else {
      await removeWorkdir(dir).catch((error: unknown) => {
        log('provisioner', `cannot remove the working directory: ${errorMessage(error)}`)
      })
    }
  }
}

async function run(
  job: ProvisionJob,
  dir: string,
  signal: AbortSignal | undefined,
  log: (source: ProvisionLogLine['source'], text: string) => void,
  redactor: Redactor,
): Promise<ProvisionResult> {
  const env = terraformEnv(job.variables)
  let error: string | undefined

  for (const step of steps(job)) {
    if (signal?.aborted === true) {
      log('provisioner', `canceled before terraform ${step.name}`)
      error = `terraform ${step.name}: canceled`
      break
    }
    log('provisioner', `terraform ${step.name}`)
    const outcome = await runTerraform(step.args, {
      cwd: dir,
      env,
      signal,
      onLine: log,
      safeCut: redactor.safeCut,
    })
    log('provisioner', describe(outcome))
    if (outcome.canceled) {
      error = `terraform ${step.name}: canceled`
      break
    }
    if (outcome.exitCode !== 0) {
      error = `terraform ${step.name}: ${describe(outcome)}`
      break
    }
  }

  let state = job.state
  try {
    const found = await readState(dir)
    if (found !== undefined) {
      if (found.file !== STATE_FILE) log('provisioner', `state read from ${found.file}`)
      state = found.state
    }
  } catch (readError) {
    const message = `cannot read the state back: ${errorMessage(readError)}`
    log('provisioner', message)
    error ??= message
  }

  if (error !== undefined) return { ok: false, state, error: redactor.redact(error) }
  return { ok: true, state }
}
