/**
 * The provisioner: runs the real `terraform` for one workspace build, in a
 * working directory of its own, and hands back the state for the next build.
 *
 * `provision` throws only MESH_BAD_REQUEST, for a job that cannot be run as
 * given (a file path outside the working directory, a malformed build id or
 * variable name). Everything that goes wrong while running, Terraform errors
 * and cancellation included, is a result with `ok: false`, a one-line
 * `error`, and the details in the log.
 *
 * `recoverWorkdir` cleans up after a coordinator that died mid-build: it
 * stops the terraform still running in the build's working directory and
 * hands back the state it left there.
 */
export type {
  ProvisionFile,
  ProvisionJob,
  ProvisionLogLine,
  ProvisionOptions,
  ProvisionResult,
} from './types.ts'
export { provision } from './provision.ts'
export { recoverWorkdir, type RecoverOptions, type RecoverResult } from './recover.ts'
export { ENV_KEEP_WORKDIRS, templatePath } from './workdir.ts'
