/**
 * The build queue. Builds run in this process, one at a time per workspace
 * and at most `maxConcurrent` in all. Each run loads the template version
 * and the workspace's last Terraform state, issues a new agent token for a
 * start, calls the provisioner, stores every log line and the new state,
 * and records how the build ended.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { BuildStatus } from '../sdk/api-types.ts'
import type { Logger } from '../sdk/logger.ts'
import type { ProvisionJob, ProvisionOptions, ProvisionResult } from '../provisioner/index.ts'
import { BUILD_CANCEL_GRACE, DEFAULT_MAX_CONCURRENT_BUILDS } from './constants.ts'
import { createLogWriter, stripOwner, type LogHub, type LogWriter } from './build-logs.ts'
import type { KeyedLock } from './lock.ts'
import type { BuildRecord, WorkspaceRecord } from './records.ts'
import type { RelayPolicy } from './relay.ts'
import { hashToken, newAgentToken } from './secrets.ts'
import type { Batch, Store } from './store.ts'
import type { Templates } from './templates.ts'

export type ProvisionFn = (job: ProvisionJob, options: ProvisionOptions) => Promise<ProvisionResult>

export interface BuildsComponents {
  store: Store
  locks: KeyedLock
  hub: LogHub
  templates: Templates
  relay: RelayPolicy
  log: Logger
  provision: ProvisionFn
  dataDir: string
  accessUrl: string
  /** Shell command that runs the agent in the foreground. */
  agentCommand: string
  maxConcurrent?: number
}

export interface Builds {
  /** Schedules a queued build already in the store. */
  enqueue(build: BuildRecord): void
  /** Marks builds an earlier process left queued or running as failed; returns how many. */
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
  const maxConcurrent = components.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_BUILDS
  const pending: BuildRecord[] = []
  const active = new Map<string, Active>()
  const busyWorkspaces = new Set<string>()
  let closing = false

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
    const localDir = join(components.dataDir, 'workspaces', ws.id)
    if (start) await mkdir(localDir, { recursive: true, mode: 0o700 })

    writer.append({
      source: 'provisioner',
      text: `${build.transition} ${ws.name}: template ${ws.template} version ${build.templateVersion}`,
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
      workRoot: join(components.dataDir, 'builds'),
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

  async function run(build: BuildRecord, controller: AbortController): Promise<void> {
    const buildLog = log.child({ build_id: build.id, workspace_id: build.workspaceId })
    const writer = createLogWriter(store, hub, build.id, buildLog)
    try {
      const running = { ...build, status: 'running' as const, startedAt: new Date().toISOString() }
      await store.builds.put(build.id, running, { sync: true })
      hub.publish(build.id, { type: 'build', build: stripOwner(running) })
      buildLog.info({ transition: build.transition }, 'build started')

      const result = await execute(running, writer, controller.signal)
      await writer.flush()
      if (result.ok) {
        await finish(build.id, 'succeeded')
        buildLog.info('build succeeded')
      } else {
        await finish(build.id, 'failed', result.error ?? 'the build failed')
        buildLog.info({ error: result.error }, 'build failed')
      }
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err)
      writer.append({ source: 'provisioner', text: `build failed: ${message}` })
      await writer.flush()
      buildLog.error({ err }, 'build threw')
      await finish(build.id, 'failed', message).catch((e: unknown) =>
        buildLog.error({ err: e }, 'record failed build'),
      )
    }
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

  return {
    enqueue(build) {
      pending.push(build)
      pump()
    },

    async recover() {
      let count = 0
      for await (const build of store.builds.values()) {
        if (!isBuildActive(build.status)) continue
        const error = 'coordinator restarted during the build'
        await finish(build.id, 'failed', error)
        count++
      }
      if (count > 0) log.warn({ count }, 'builds interrupted by a restart marked failed')
      return count
    },

    async close(graceMs) {
      closing = true
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
    },
  }
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
