/**
 * The build queue. Builds run in this process, one at a time per workspace
 * and at most `maxConcurrent` in all. Each run loads the template version
 * and the workspace's last Terraform state, issues a new agent token for a
 * start, calls the provisioner, stores every log line and the new state,
 * and records how the build ended.
 *
 * A workspace can always be deleted: a delete build that fails still
 * removes the workspace when its Terraform state records no resources
 * (there is none, it is empty, or every resource in it is destroyed), as
 * nothing is left to destroy. That covers workspaces whose parameters or
 * template version can never build. A delete that succeeds also removes the
 * workspace's folder on this host (`coder_mesh_local_dir`).
 *
 * After a crash, `recover` finishes the builds the crashed process left
 * running: it stops the terraform still running in each one's working
 * directory, keeps the state it left when that is newer than the stored
 * one, removes the directory and marks the build failed.
 */
import { existsSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { BuildStatus } from '../sdk/api-types.ts'
import type { Logger } from '../sdk/logger.ts'
import type {
  ProvisionJob,
  ProvisionOptions,
  ProvisionResult,
  RecoverOptions,
  RecoverResult,
} from '../provisioner/index.ts'
import { isNewerState, stateIsEmpty } from '../provisioner/state.ts'
import { BUILD_CANCEL_GRACE, DEFAULT_MAX_CONCURRENT_BUILDS } from './constants.ts'
import {
  createLogWriter,
  lastLogSeq,
  stripOwner,
  type LogHub,
  type LogWriter,
} from './build-logs.ts'
import type { KeyedLock } from './lock.ts'
import type { BuildRecord, WorkspaceRecord } from './records.ts'
import type { RelayPolicy } from './relay.ts'
import { hashToken, newAgentToken } from './secrets.ts'
import type { Batch, Store } from './store.ts'
import type { Templates } from './templates.ts'

export type ProvisionFn = (job: ProvisionJob, options: ProvisionOptions) => Promise<ProvisionResult>

/** Recovers a build's working directory after a crash (provisioner/recover.ts). */
export type RecoverWorkdirFn = (
  workRoot: string,
  buildId: string,
  options: RecoverOptions,
) => Promise<RecoverResult>

const defaultRecoverWorkdir: RecoverWorkdirFn = async (workRoot, buildId, options) => {
  // Loaded only when a crash left builds running.
  const { recoverWorkdir } = await import('../provisioner/index.ts')
  return recoverWorkdir(workRoot, buildId, options)
}

/** Why every build the coordinator finds running or queued at startup failed. */
export const RESTART_ERROR = 'coordinator restarted during the build'

export interface BuildsComponents {
  store: Store
  locks: KeyedLock
  hub: LogHub
  templates: Templates
  relay: RelayPolicy
  log: Logger
  provision: ProvisionFn
  /** Default: the provisioner's recoverWorkdir. */
  recoverWorkdir?: RecoverWorkdirFn
  dataDir: string
  accessUrl: string
  /** Shell command that runs the agent in the foreground. */
  agentCommand: string
  maxConcurrent?: number
  /** Called once per build that ends, after its end is stored (for metrics). */
  onFinished?: (build: BuildRecord) => void
}

export interface Builds {
  /** Schedules a queued build already in the store; once closing, fails it instead. */
  enqueue(build: BuildRecord): void
  /** Builds waiting and running in this process. */
  stats(): { queued: number; running: number }
  /**
   * Fails the builds an earlier process left queued or running, after
   * stopping the terraform still running for them and keeping the state it
   * left; returns how many.
   */
  recover(): Promise<number>
  /** Lets running builds finish for up to `graceMs`, then cancels them; fails queued ones. */
  close(graceMs: number): Promise<void>
}

interface Active {
  controller: AbortController
  done: Promise<void>
}

/** The lock key under which a workspace's record is read and written. */
export function workspaceLock(id: string): string {
  return `workspace:${id}`
}

/**
 * The lock on a user's set of workspaces: a workspace is created, and a user
 * deleted, under it, so a user cannot be deleted while a workspace of theirs
 * is being created (it would be left running with no owner to reach it).
 */
export function ownerLock(userId: string): string {
  return `workspaces-of:${userId}`
}

export function isBuildActive(status: BuildStatus): boolean {
  return status === 'queued' || status === 'running'
}

function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

/** The `coder_mesh_agent_command` value for an agent binary at `bin`. */
export function agentCommandFor(bin: string): string {
  return `${shellQuote(bin)} agent`
}

export function createBuilds(components: BuildsComponents): Builds {
  const { store, locks, hub, templates, relay } = components
  const log = components.log.child({ component: 'builds' })
  const recoverWorkdir = components.recoverWorkdir ?? defaultRecoverWorkdir
  const workRoot = join(components.dataDir, 'builds')
  const localDirOf = (workspaceId: string): string =>
    join(components.dataDir, 'workspaces', workspaceId)
  const maxConcurrent = components.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_BUILDS
  const pending: BuildRecord[] = []
  const active = new Map<string, Active>()
  const busyWorkspaces = new Set<string>()
  let closing = false
  /** Builds refused while closing, being recorded as failed; close() waits for them. */
  const refusing = new Set<Promise<void>>()

  /**
   * Records how a build ended. For a stop or delete that succeeded, the same
   * write retires the agent (and for delete removes the workspace, freeing
   * its name), so no crash can leave one without the other.
   */
  async function finish(id: string, status: BuildStatus, error?: string): Promise<void> {
    const record = await store.builds.get(id)
    if (record === undefined) return
    const done: BuildRecord = { ...record, status, finishedAt: new Date().toISOString() }
    if (error !== undefined) done.error = error
    const retire = status === 'succeeded' && record.transition !== 'start'

    await locks.run(workspaceLock(record.workspaceId), async () => {
      const batch = store.batch().put(store.builds, id, done)
      const ws = retire ? await store.workspaces.get(record.workspaceId) : undefined
      if (ws !== undefined) retireAgent(batch, ws, record.transition === 'delete')
      await batch.write({ sync: true })
      if (ws !== undefined) relay.forgetAgent(ws.id)
    })
    hub.publish(id, { type: 'build', build: stripOwner(done) })
    components.onFinished?.(done)
  }

  function retireAgent(batch: Batch, ws: WorkspaceRecord, remove: boolean): void {
    if (ws.agentTokenHash !== undefined) batch.del(store.agentTokens, ws.agentTokenHash)
    if (remove) {
      batch
        .del(store.workspaces, ws.id)
        .del(store.workspaceNames, `${ws.ownerId}/${ws.name}`)
        .del(store.states, ws.id)
    } else {
      batch.put(store.workspaces, ws.id, { ...ws, agentTokenHash: undefined, agent: undefined })
    }
  }

  /** Updates the workspace record under its lock; a no-op once the workspace is gone. */
  function updateWorkspace(
    id: string,
    change: (ws: WorkspaceRecord) => Promise<void>,
  ): Promise<void> {
    return locks.run(workspaceLock(id), async () => {
      const ws = await store.workspaces.get(id)
      if (ws !== undefined) await change(ws)
    })
  }

  /** A fresh agent token for a start; the previous one and its agent stop counting. */
  async function rotateAgentToken(workspaceId: string): Promise<string> {
    const token = newAgentToken()
    await updateWorkspace(workspaceId, async (ws) => {
      const batch = store.batch()
      if (ws.agentTokenHash !== undefined) batch.del(store.agentTokens, ws.agentTokenHash)
      const next = { ...ws, agentTokenHash: hashToken(token), agent: undefined }
      await batch
        .put(store.agentTokens, next.agentTokenHash, ws.id)
        .put(store.workspaces, ws.id, next)
        .write({ sync: true })
      relay.forgetAgent(ws.id)
    })
    return token
  }

  async function execute(build: BuildRecord, writer: LogWriter, signal: AbortSignal) {
    const ws = await store.workspaces.get(build.workspaceId)
    if (ws === undefined) throw new Error('the workspace no longer exists')
    const owner = await store.users.get(ws.ownerId)
    const files = await templates.files(ws.template, build.templateVersion)
    const state = await store.states.get(ws.id)

    const start = build.transition === 'start'
    const token = start ? await rotateAgentToken(ws.id) : ''
    const localDir = localDirOf(ws.id)
    if (start) await mkdir(localDir, { recursive: true, mode: 0o700 })

    writer.append({
      source: 'provisioner',
      text:
        `${build.transition} ${ws.name}: ` +
        `template ${ws.template} version ${build.templateVersion}`,
    })
    const job: ProvisionJob = {
      buildId: build.id,
      transition: build.transition,
      files,
      variables: {
        ...ws.parameters,
        coder_mesh_url: components.accessUrl,
        coder_mesh_agent_token: token,
        coder_mesh_agent_command: components.agentCommand,
        coder_mesh_workspace_name: ws.name,
        coder_mesh_workspace_owner: owner?.username ?? '',
        coder_mesh_workspace_id: ws.id,
        coder_mesh_transition: build.transition,
        coder_mesh_start_count: start ? '1' : '0',
        coder_mesh_local_dir: localDir,
      },
      sensitive: ['coder_mesh_agent_token'],
      state: state === undefined ? undefined : Buffer.from(state, 'base64'),
      workRoot,
    }

    const result = await components.provision(job, { onLog: writer.append, signal })
    // Keep the state even from a failed run: it records what did get created.
    if (result.state !== undefined) {
      await updateWorkspace(ws.id, (current) =>
        store.states.put(current.id, result.state!.toString('base64'), { sync: true }),
      )
    }
    return result
  }

  /** Whether the workspace's stored state records no resources (see the top of this file). */
  async function nothingToDestroy(workspaceId: string): Promise<boolean> {
    const state = await store.states.get(workspaceId)
    return stateIsEmpty(state === undefined ? undefined : Buffer.from(state, 'base64'))
  }

  /** Removes the workspace's folder on this host, if it is still there. */
  async function removeLocalDir(workspaceId: string, say: (text: string) => void): Promise<void> {
    const dir = localDirOf(workspaceId)
    if (!existsSync(dir)) return
    try {
      await rm(dir, { recursive: true, force: true, maxRetries: 3 })
      say(`workspace folder removed: ${dir}`)
    } catch (err) {
      say(`cannot remove the workspace folder ${dir}: ${errorMessage(err)}`)
      log.warn({ err, workspace_id: workspaceId }, 'remove workspace folder')
    }
  }

  /**
   * Records how a build ended: `error` undefined for success. A failed
   * delete of a workspace with nothing left to destroy succeeds anyway.
   */
  async function conclude(
    build: BuildRecord,
    writer: LogWriter,
    buildLog: Logger,
    error: string | undefined,
  ): Promise<void> {
    const say = (text: string): void => writer.append({ source: 'provisioner', text })
    if (error !== undefined && build.transition === 'delete') {
      if (await nothingToDestroy(build.workspaceId)) {
        say(
          `the delete failed (${error}), but the workspace's Terraform state records no ` +
            'resources: nothing is left to destroy, so the workspace is removed',
        )
        error = undefined
      }
    }
    if (error === undefined && build.transition === 'delete') {
      await removeLocalDir(build.workspaceId, say)
    }
    await writer.flush()
    if (error === undefined) {
      await finish(build.id, 'succeeded')
      buildLog.info('build succeeded')
    } else {
      await finish(build.id, 'failed', error)
      buildLog.info({ error }, 'build failed')
    }
  }

  async function run(build: BuildRecord, controller: AbortController): Promise<void> {
    const buildLog = log.child({ build_id: build.id, workspace_id: build.workspaceId })
    const writer = createLogWriter(store, hub, build.id, buildLog)
    let error: string | undefined
    try {
      const running = { ...build, status: 'running' as const, startedAt: new Date().toISOString() }
      await store.builds.put(build.id, running, { sync: true })
      hub.publish(build.id, { type: 'build', build: stripOwner(running) })
      buildLog.info({ transition: build.transition }, 'build started')

      const result = await execute(running, writer, controller.signal)
      if (!result.ok) error = result.error ?? 'the build failed'
    } catch (err) {
      error = errorMessage(err)
      writer.append({ source: 'provisioner', text: `build failed: ${error}` })
      buildLog.error({ err }, 'build threw')
    }
    try {
      await conclude(build, writer, buildLog, error)
    } catch (err) {
      buildLog.error({ err }, 'record the end of the build')
      await finish(build.id, 'failed', error ?? errorMessage(err)).catch((e: unknown) =>
        buildLog.error({ err: e }, 'record failed build'),
      )
    }
  }

  /**
   * Finishes a build an earlier process left queued or running. A running
   * one may have left its terraform running, and its state in the working
   * directory: stop it, and keep that state when it is newer than the stored
   * one, so that the next build acts on what really exists.
   */
  async function recoverBuild(build: BuildRecord): Promise<void> {
    const buildLog = log.child({ build_id: build.id, workspace_id: build.workspaceId })
    const writer = createLogWriter(
      store,
      hub,
      build.id,
      buildLog,
      await lastLogSeq(store, build.id),
    )
    const say = (text: string): void => writer.append({ source: 'provisioner', text })
    say(RESTART_ERROR)

    if (build.status === 'running') {
      try {
        const found = await recoverWorkdir(workRoot, build.id, { onLog: say })
        if (found.found) {
          say("terraform's output after the coordinator stopped is not in this log")
          if (found.stopped.length === 0) say('terraform was no longer running')
        }
        const state = found.state
        if (state !== undefined) {
          await updateWorkspace(build.workspaceId, async (ws) => {
            const stored = await store.states.get(ws.id)
            if (
              isNewerState(state, stored === undefined ? undefined : Buffer.from(stored, 'base64'))
            ) {
              await store.states.put(ws.id, state.toString('base64'), { sync: true })
              say('kept the Terraform state the build left in its working directory')
            }
          })
        }
      } catch (err) {
        say(`cannot recover the build's working directory: ${errorMessage(err)}`)
        buildLog.error({ err }, 'recover working directory')
      }
    }
    await conclude(build, writer, buildLog, RESTART_ERROR)
  }

  function pump(): void {
    while (!closing && active.size < maxConcurrent) {
      const index = pending.findIndex((b) => !busyWorkspaces.has(b.workspaceId))
      if (index === -1) return
      const [build] = pending.splice(index, 1)
      if (build === undefined) return

      const controller = new AbortController()
      busyWorkspaces.add(build.workspaceId)
      const done = run(build, controller).finally(() => {
        active.delete(build.id)
        busyWorkspaces.delete(build.workspaceId)
        pump()
      })
      active.set(build.id, { controller, done })
    }
  }

  /** Fails queued builds, lets running ones finish for `graceMs`, then cancels them. */
  async function drain(graceMs: number): Promise<void> {
    for (const build of pending.splice(0)) {
      await finish(build.id, 'failed', 'coordinator shut down before the build started')
    }

    const all = () => Promise.allSettled([...active.values()].map((a) => a.done))
    if (await settlesWithin(all(), graceMs)) return

    log.warn({ count: active.size }, 'canceling running builds for shutdown')
    for (const a of active.values()) a.controller.abort(new Error('coordinator shutting down'))
    if (await settlesWithin(all(), BUILD_CANCEL_GRACE)) return

    for (const id of active.keys()) {
      await finish(id, 'failed', 'coordinator shut down during the build')
    }
  }

  return {
    enqueue(build) {
      if (closing) {
        // Stored as queued already: record why it will never run.
        const done = finish(build.id, 'failed', 'coordinator shut down before the build started')
          .catch((err: unknown) => log.error({ err, build_id: build.id }, 'record failed build'))
          .finally(() => refusing.delete(done))
        refusing.add(done)
        return
      }
      pending.push(build)
      pump()
    },

    stats: () => ({ queued: pending.length, running: active.size }),

    async recover() {
      const interrupted: BuildRecord[] = []
      for await (const build of store.builds.values()) {
        if (isBuildActive(build.status)) interrupted.push(build)
      }
      await Promise.all(interrupted.map(recoverBuild))
      if (interrupted.length > 0) {
        log.warn({ count: interrupted.length }, 'builds interrupted by a restart recovered')
      }
      return interrupted.length
    },

    async close(graceMs) {
      closing = true
      await drain(graceMs)
      // Builds asked for while draining were refused; let their records land.
      await Promise.allSettled([...refusing])
    },
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)))
  try {
    return await Promise.race([promise.then(() => true), timeout])
  } finally {
    clearTimeout(timer)
  }
}
