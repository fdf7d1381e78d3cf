/**
 * Workspaces and the builds that move them between states. Every call acts
 * on the caller's own workspaces only; another user's workspace answers as
 * if it did not exist. A workspace's status is derived from its latest
 * build, never stored.
 */
import { randomUUID } from 'node:crypto'
import type {
  Build,
  CreateWorkspaceRequest,
  CreateWorkspaceResponse,
  Transition,
  Workspace,
  WorkspaceStatus,
} from '../sdk/api-types.ts'
import { MeshError, type Validation } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { assertName } from '../sdk/names.ts'
import { stripOwner } from './build-logs.ts'
import { isBuildActive, ownerLock, workspaceLock, type Builds } from './builds.ts'
import { AGENT_CONNECTED_WINDOW } from './constants.ts'
import type { KeyedLock } from './lock.ts'
import type { AgentReportRecord, BuildRecord, UserRecord, WorkspaceRecord } from './records.ts'
import { takePage, type Page, type PageRange, type Store } from './store.ts'
import type { Templates } from './templates.ts'
import { quoteText } from './text.ts'

export interface WorkspacesComponents {
  store: Store
  locks: KeyedLock
  templates: Templates
  builds: Builds
  log: Logger
  now?: () => number
}

export interface Workspaces {
  create(owner: UserRecord, request: CreateWorkspaceRequest): Promise<CreateWorkspaceResponse>
  /** One page of the owner's workspaces, by name. */
  list(owner: UserRecord, range: PageRange): Promise<Page<Workspace>>
  /** One page of every user's workspaces, by owner's username, then name. */
  listAll(range: PageRange): Promise<Page<Workspace>>
  get(owner: UserRecord, name: string): Promise<Workspace>
  /** The stored record; MESH_WORKSPACE_NOT_FOUND if the owner has no such workspace. */
  record(owner: UserRecord, name: string): Promise<WorkspaceRecord>
  status(record: WorkspaceRecord): Promise<WorkspaceStatus>
  /** Starts a build; MESH_BUILD_IN_PROGRESS while the latest one is queued or running. */
  createBuild(owner: UserRecord, name: string, transition: Transition): Promise<Build>
  /** A build of the viewer's (of anyone's when `any`); MESH_BUILD_NOT_FOUND otherwise. */
  build(viewer: UserRecord, id: string, any?: boolean): Promise<Build>
}

const STATUS: Record<Transition, Record<'active' | 'succeeded', WorkspaceStatus>> = {
  start: { active: 'starting', succeeded: 'running' },
  stop: { active: 'stopping', succeeded: 'stopped' },
  delete: { active: 'deleting', succeeded: 'deleted' },
}

export function workspaceStatus(build: Pick<Build, 'transition' | 'status'>): WorkspaceStatus {
  if (build.status === 'failed') return 'failed'
  return STATUS[build.transition][build.status === 'succeeded' ? 'succeeded' : 'active']
}

/** Terraform variable names; the coder_mesh_ ones are the coordinator's to set. */
const PARAMETER_NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/
/** Longest parameter name, in characters. */
export const MAX_PARAMETER_NAME = 128
/** Largest parameter value, in UTF-8 bytes. */
export const MAX_PARAMETER_VALUE_BYTES = 16 * 1024
/** Largest total of every parameter's name and value, in UTF-8 bytes. */
export const MAX_PARAMETERS_BYTES = 64 * 1024

/**
 * Parameters are checked once, at create, because every build of the
 * workspace passes them to Terraform (as TF_VAR_<name> in its environment):
 * one that cannot be passed would fail every build, its delete included.
 * Values are bounded well below what an environment may hold.
 */
function checkParameters(parameters: Record<string, string>): void {
  const validations: Validation[] = []
  let total = 0
  const names = new Map<string, string>()
  for (const [name, value] of Object.entries(parameters)) {
    const field = `parameters.${name}`
    names.set(field, name)
    const bytes = Buffer.byteLength(value)
    total += Buffer.byteLength(name) + bytes
    if (!PARAMETER_NAME.test(name) || name.length > MAX_PARAMETER_NAME) {
      validations.push({
        field,
        detail:
          'is not a Terraform variable name (a letter or "_", then letters, digits, "_" and ' +
          `"-"; at most ${MAX_PARAMETER_NAME})`,
      })
    } else if (name.startsWith('coder_mesh_')) {
      validations.push({ field, detail: 'is set by coder-mesh and cannot be overridden' })
    }
    if (value.includes('\0')) {
      validations.push({ field, detail: 'must not contain a NUL byte' })
    } else if (bytes > MAX_PARAMETER_VALUE_BYTES) {
      validations.push({
        field,
        detail: `is ${bytes} bytes long; at most ${MAX_PARAMETER_VALUE_BYTES} are allowed`,
      })
    }
  }
  if (total > MAX_PARAMETERS_BYTES) {
    validations.push({
      field: 'parameters',
      detail: `total ${total} bytes; at most ${MAX_PARAMETERS_BYTES} are allowed`,
    })
  }
  if (validations.length === 0) return
  const first = validations[0]!
  const name = names.get(first.field)
  const which = name === undefined ? 'parameters:' : `parameter ${quoteText(name)}`
  throw new MeshError('MESH_VALIDATION', `Invalid ${which} ${first.detail}.`, { validations })
}

/**
 * True when the workspace's current agent said it stopped (its last report,
 * `off`, came after its last registration): it is not connected, whatever
 * the heartbeat window says, until it registers again.
 */
export function agentSaidOff(ws: WorkspaceRecord, report: AgentReportRecord | undefined): boolean {
  if (ws.agent === undefined || report === undefined) return false
  if (report.agentTokenHash !== ws.agentTokenHash || report.lifecycle !== 'off') return false
  return Date.parse(report.updatedAt) >= Date.parse(ws.agent.lastSeenAt)
}

function notFound(name: string): MeshError {
  return new MeshError(
    'MESH_WORKSPACE_NOT_FOUND',
    `Workspace ${JSON.stringify(name)} does not exist.`,
  )
}

export function createWorkspaces(components: WorkspacesComponents): Workspaces {
  const { store, locks, templates, builds } = components
  const log = components.log.child({ component: 'workspaces' })
  const now = components.now ?? Date.now

  async function latestBuild(ws: WorkspaceRecord): Promise<BuildRecord> {
    const build = await store.builds.get(ws.latestBuildId)
    if (build === undefined)
      throw new Error(`workspace ${ws.id}: latest build ${ws.latestBuildId} is missing`)
    return build
  }

  async function view(ws: WorkspaceRecord, owner: UserRecord): Promise<Workspace> {
    const build = await latestBuild(ws)
    let agent: Workspace['agent'] = null
    if (ws.agent !== undefined) {
      agent = {
        ...ws.agent,
        connected: now() - Date.parse(ws.agent.lastSeenAt) < AGENT_CONNECTED_WINDOW,
      }
      // What this agent reported (one of an earlier start no longer counts).
      const report = await store.agentReports.get(ws.id)
      if (agentSaidOff(ws, report)) agent.connected = false
      if (report !== undefined && report.agentTokenHash === ws.agentTokenHash) {
        agent.lifecycle = report.lifecycle
        if (report.startError !== undefined) agent.startError = report.startError
        if (report.stats !== undefined) agent.stats = report.stats
        if (report.ports !== undefined) agent.ports = report.ports
      }
    }
    return {
      id: ws.id,
      name: ws.name,
      owner: owner.username,
      template: ws.template,
      templateVersion: ws.templateVersion,
      status: workspaceStatus(build),
      latestBuild: stripOwner(build),
      agent,
      createdAt: ws.createdAt,
    }
  }

  /** The views of the given workspaces, in the given order; one deleted meanwhile is left out. */
  async function views(wanted: { id: string; owner: UserRecord }[]): Promise<Workspace[]> {
    const out = await Promise.all(
      wanted.map(async ({ id, owner }) => {
        const ws = await store.workspaces.get(id)
        return ws === undefined ? undefined : view(ws, owner)
      }),
    )
    return out.filter((item) => item !== undefined)
  }

  /** Every workspace id with its owner's id, by owner's username, then workspace name. */
  async function* everyWorkspaceId(): AsyncGenerator<{ id: string; ownerId: string }> {
    for await (const ownerId of store.usernames.values()) {
      for await (const id of store.workspaceNames.values({ prefix: `${ownerId}/` })) {
        yield { id, ownerId }
      }
    }
  }

  async function record(owner: UserRecord, name: string): Promise<WorkspaceRecord> {
    assertName('workspace', name)
    const id = await store.workspaceNames.get(`${owner.id}/${name}`)
    const ws = id === undefined ? undefined : await store.workspaces.get(id)
    if (ws === undefined || ws.ownerId !== owner.id) throw notFound(name)
    return ws
  }

  function newBuild(ws: WorkspaceRecord, transition: Transition, version: number): BuildRecord {
    return {
      id: randomUUID(),
      workspaceId: ws.id,
      workspaceName: ws.name,
      number: ws.buildCount + 1,
      transition,
      templateVersion: version,
      status: 'queued',
      createdAt: new Date(now()).toISOString(),
      ownerId: ws.ownerId,
    }
  }

  return {
    async create(owner, request) {
      assertName('workspace', request.name)
      assertName('template', request.template)
      const parameters = request.parameters ?? {}
      checkParameters(parameters)

      const nameKey = `${owner.id}/${request.name}`
      const { ws, build } = await locks.run(ownerLock(owner.id), async () => {
        // Deleted since the request was authenticated (user-admin.ts holds this lock too).
        if ((await store.users.get(owner.id)) === undefined) {
          throw new MeshError(
            'MESH_USER_NOT_FOUND',
            `User ${JSON.stringify(owner.username)} was deleted.`,
          )
        }
        if ((await store.workspaceNames.get(nameKey)) !== undefined) {
          throw new MeshError(
            'MESH_WORKSPACE_EXISTS',
            `You already have a workspace named ${JSON.stringify(request.name)}.`,
          )
        }
        const template = await templates.get(request.template)
        if (template === undefined) {
          throw new MeshError(
            'MESH_TEMPLATE_NOT_FOUND',
            `Template ${JSON.stringify(request.template)} does not exist.`,
          )
        }

        const draft: WorkspaceRecord = {
          id: randomUUID(),
          name: request.name,
          ownerId: owner.id,
          template: template.name,
          templateVersion: template.activeVersion,
          parameters,
          createdAt: new Date(now()).toISOString(),
          latestBuildId: '',
          buildCount: 0,
        }
        const build = newBuild(draft, 'start', template.activeVersion)
        const ws = { ...draft, latestBuildId: build.id, buildCount: build.number }
        await store
          .batch()
          .put(store.workspaces, ws.id, ws)
          .put(store.workspaceNames, nameKey, ws.id)
          .put(store.builds, build.id, build)
          .write({ sync: true })
        return { ws, build }
      })

      log.info({ workspace_id: ws.id, name: ws.name, template: ws.template }, 'workspace created')
      builds.enqueue(build)
      return { workspace: await view(ws, owner), build: stripOwner(build) }
    },

    async list(owner, range) {
      const ids = store.workspaceNames.values({ prefix: `${owner.id}/` })
      const page = await takePage(ids, range)
      return { items: await views(page.items.map((id) => ({ id, owner }))), more: page.more }
    },

    async listAll(range) {
      const page = await takePage(everyWorkspaceId(), range)
      const owners = new Map<string, UserRecord | undefined>()
      const wanted: { id: string; owner: UserRecord }[] = []
      for (const { id, ownerId } of page.items) {
        if (!owners.has(ownerId)) owners.set(ownerId, await store.users.get(ownerId))
        const owner = owners.get(ownerId)
        if (owner !== undefined) wanted.push({ id, owner })
      }
      return { items: await views(wanted), more: page.more }
    },

    async get(owner, name) {
      return view(await record(owner, name), owner)
    },

    record,

    async status(ws) {
      return workspaceStatus(await latestBuild(ws))
    },

    async createBuild(owner, name, transition) {
      const found = await record(owner, name)
      const build = await locks.run(workspaceLock(found.id), async () => {
        const ws = await store.workspaces.get(found.id)
        if (ws === undefined) throw notFound(name)
        const latest = await latestBuild(ws)
        if (isBuildActive(latest.status)) {
          throw new MeshError(
            'MESH_BUILD_IN_PROGRESS',
            `Workspace ${JSON.stringify(name)} is busy with a ${latest.transition} build; ` +
              'wait for it to finish.',
            { detail: `build ${latest.id} is ${latest.status}` },
          )
        }

        // A start picks up the template's active version (that is how a
        // workspace is updated); stop and delete run the version it runs.
        let version = ws.templateVersion
        if (transition === 'start') {
          version = (await templates.get(ws.template))?.activeVersion ?? version
        }
        const build = newBuild(ws, transition, version)
        const next: WorkspaceRecord = {
          ...ws,
          latestBuildId: build.id,
          buildCount: build.number,
          templateVersion: version,
        }
        await store
          .batch()
          .put(store.builds, build.id, build)
          .put(store.workspaces, ws.id, next)
          .write({ sync: true })
        return build
      })

      log.info({ workspace_id: build.workspaceId, build_id: build.id, transition }, 'build queued')
      builds.enqueue(build)
      return stripOwner(build)
    },

    async build(viewer, id, any = false) {
      const build = await store.builds.get(id)
      if (build === undefined || (build.ownerId !== viewer.id && !any)) {
        throw new MeshError('MESH_BUILD_NOT_FOUND', `Build ${JSON.stringify(id)} does not exist.`)
      }
      return stripOwner(build)
    },
  }
}
