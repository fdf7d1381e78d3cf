/**
 * Workspace lifecycle: `create`, `list`, `show`, `start`, `stop`, `restart`,
 * `delete`. Builds stream their log to stdout as it happens.
 */
import type { Command } from 'commander'
import { setTimeout as sleep } from 'node:timers/promises'
import { isUnreachable, type ApiClient } from '../../sdk/api-client.ts'
import type {
  AgentInfo,
  AgentStats,
  Build,
  ListeningPort,
  Transition,
  Workspace,
} from '../../sdk/api-types.ts'
import { MeshError } from '../../sdk/errors.ts'
import { assertName, parseWorkspaceRef } from '../../sdk/names.ts'
import { parseParameter, parseParameters } from '../args.ts'
import { examples } from '../cli.ts'
import {
  notice,
  outputOption,
  printable,
  timeAgo,
  write,
  writeJson,
  writeListing,
  type OutputFormat,
} from '../output.ts'
import { canPrompt, confirm } from '../prompt.ts'
import { apiClient } from '../session.ts'
import { registerLogsCommand } from './logs.ts'

/** How long to keep following a build while the coordinator is away, in ms. */
export const FOLLOW_RETRY_MS = 60_000

/** First and longest wait between attempts to reach the coordinator again, in ms. */
const FOLLOW_BACKOFF_FIRST_MS = 500
const FOLLOW_BACKOFF_MAX_MS = 5_000

/** What `followBuild` prints once per outage, on stderr. */
export const LOST_COORDINATOR = 'Lost the coordinator, retrying...'

interface YesFlag {
  yes?: boolean
}

function collect(value: string, previous: string[]): string[] {
  parseParameter(value)
  return [...previous, value]
}

export function registerWorkspaceCommands(program: Command): void {
  examples(
    program
      .command('create')
      .description('create a workspace from a template and start it')
      .argument('<name>', 'workspace name')
      .requiredOption('-t, --template <template>', 'template to build from')
      .option('--parameter <name=value>', 'template parameter (repeatable)', collect, [])
      .option('-y, --yes', 'do not ask for confirmation')
      .action(async (name: string, flags: YesFlag & { template: string; parameter: string[] }) => {
        assertName('workspace', name)
        assertName('template', flags.template)
        const parameters = parseParameters(flags.parameter)
        await confirmUnlessYes(flags, `Create workspace ${name} from template ${flags.template}?`)
        const api = await apiClient()
        const { build } = await api.createWorkspace({
          name,
          template: flags.template,
          parameters: Object.keys(parameters).length > 0 ? parameters : undefined,
        })
        await followBuild(api, build)
        await write(`Workspace ${name} is running\n`)
      }),
    'coder-mesh create dev --template local',
    "coder-mesh create dev --template local --parameter startup_script='echo hi' -y",
  )

  examples(
    program
      .command('list')
      .alias('ls')
      .description("list your workspaces (or another user's, or everyone's)")
      .option('--owner <user>', "list this user's workspaces (another user's: owners only)")
      .option('-a, --all', "list every user's workspaces (owners only)")
      .addOption(outputOption())
      .action(async (flags: { output: OutputFormat; owner?: string; all?: boolean }) => {
        if (flags.owner !== undefined && flags.all === true) {
          throw new MeshError('MESH_BAD_ARGUMENT', 'Pass --owner or --all, not both.')
        }
        const api = await apiClient()
        const others = flags.owner !== undefined || flags.all === true
        const list = await api.workspaces({ owner: flags.owner, all: flags.all })
        await writeListing(flags.output, list, {
          headers: [
            ...(others ? ['OWNER'] : []),
            'NAME',
            'TEMPLATE',
            'STATUS',
            'AGENT',
            'LAST BUILD',
          ],
          row: (w) => [
            ...(others ? [w.owner] : []),
            w.name,
            w.template,
            w.status,
            agentState(w),
            describeBuild(w.latestBuild),
          ],
          empty:
            flags.all === true
              ? 'No one has a workspace yet.'
              : flags.owner !== undefined
                ? `${flags.owner} has no workspaces.`
                : "No workspaces yet: create one with 'coder-mesh create NAME --template T'.",
        })
      }),
    'coder-mesh list',
    'coder-mesh list --all -o json',
  )

  examples(
    program
      .command('show')
      .description("show a workspace's details, its latest build and its agent")
      .argument('<name>', "workspace name (OWNER/NAME for another user's)")
      .addOption(outputOption())
      .action(async (name: string, flags: { output: OutputFormat }) => {
        parseWorkspaceRef(name)
        const api = await apiClient()
        const workspace = await api.workspace(name)
        if (flags.output === 'json') await writeJson(workspace)
        else await write(describeWorkspace(workspace))
      }),
    'coder-mesh show dev',
    'coder-mesh show dev -o json',
  )

  registerLogsCommand(program)

  const lifecycle: { name: string; transition: Transition; does: string; done: string }[] = [
    {
      name: 'start',
      transition: 'start',
      does:
        "start a stopped workspace; on a running one, rebuild it on the template's " +
        'active version (its processes are stopped)',
      done: 'is running',
    },
    {
      name: 'stop',
      transition: 'stop',
      does: 'stop a workspace (keeps its data)',
      done: 'is stopped',
    },
  ]
  for (const step of lifecycle) {
    examples(
      program
        .command(step.name)
        .description(step.does)
        .argument('<name>', "workspace name (OWNER/NAME for another user's)")
        .option('-y, --yes', 'do not ask for confirmation')
        .action(async (name: string) => {
          parseWorkspaceRef(name)
          const api = await apiClient()
          await runBuild(api, name, step.transition)
          await write(`Workspace ${name} ${step.done}\n`)
        }),
      `coder-mesh ${step.name} dev`,
    )
  }

  examples(
    program
      .command('restart')
      .description('stop a workspace, then start it again')
      .argument('<name>', "workspace name (OWNER/NAME for another user's)")
      .option('-y, --yes', 'do not ask for confirmation')
      .action(async (name: string) => {
        parseWorkspaceRef(name)
        const api = await apiClient()
        const workspace = await api.workspace(name)
        if (workspace.status !== 'stopped') await runBuild(api, name, 'stop')
        await runBuild(api, name, 'start')
        await write(`Workspace ${name} is running\n`)
      }),
    'coder-mesh restart dev',
  )

  examples(
    program
      .command('delete')
      .alias('rm')
      .description('destroy a workspace and its resources')
      .argument('<name>', "workspace name (OWNER/NAME for another user's)")
      .option('-y, --yes', 'do not ask for confirmation (required without a terminal)')
      .action(async (name: string, flags: YesFlag) => {
        parseWorkspaceRef(name)
        if (flags.yes !== true && !canPrompt()) {
          throw new MeshError(
            'MESH_BAD_ARGUMENT',
            `Deleting workspace ${name} destroys its resources: pass -y to confirm.`,
          )
        }
        const api = await apiClient()
        // Fail on an unknown workspace before asking anything.
        await api.workspace(name)
        await confirmUnlessYes(flags, `Delete workspace ${name} and destroy its resources?`)
        await runBuild(api, name, 'delete')
        await write(`Workspace ${name} deleted\n`)
      }),
    'coder-mesh delete dev -y',
  )
}

/** Asks on a terminal unless -y was given; without a terminal, goes ahead. */
async function confirmUnlessYes(flags: YesFlag, question: string): Promise<void> {
  if (flags.yes === true || !canPrompt()) return
  if (!(await confirm(question))) throw new MeshError('MESH_BAD_ARGUMENT', 'Canceled.')
}

async function runBuild(api: ApiClient, name: string, transition: Transition): Promise<Build> {
  return followBuild(api, await api.createBuild(name, transition))
}

/**
 * Streams the build's log to stdout until it ends, and returns the final
 * build; a failed build throws MESH_BUILD_FAILED with the build's error.
 *
 * When the coordinator goes away (a restart), prints LOST_COORDINATOR once
 * on stderr and follows again with backoff for up to FOLLOW_RETRY_MS. The
 * API has no "since" parameter: a new stream starts from the first line, so
 * lines already printed are skipped by their seq.
 */
export async function followBuild(
  api: ApiClient,
  build: Build,
  options: { retryFor?: number } = {},
): Promise<Build> {
  const retryFor = options.retryFor ?? FOLLOW_RETRY_MS
  let lastSeq = 0
  let final: Build | undefined
  /** When the current outage began; undefined while the stream works. */
  let lostSince: number | undefined
  let attempt = 0

  for (;;) {
    try {
      for await (const event of api.followBuildLogs(build.id)) {
        if (event.type === 'build') {
          final = event.build
          continue
        }
        // The log flows again: a later outage gets its own notice and time.
        lostSince = undefined
        attempt = 0
        if (event.seq > lastSeq) {
          lastSeq = event.seq
          await write(event.text.replace(/\n$/, '') + '\n')
        }
      }
      if (final !== undefined && isFinished(final)) break
      // The stream ended before the build did: the coordinator is shutting down.
      throw new MeshError('MESH_UNAVAILABLE', 'The coordinator ended the build log early.')
    } catch (err) {
      if (!isUnreachable(err)) throw err
      const now = Date.now()
      if (lostSince === undefined) {
        lostSince = now
        notice(LOST_COORDINATOR)
      }
      if (now - lostSince >= retryFor) throw err
      await sleep(backoff(attempt++))
    }
  }

  if (final.status === 'failed') {
    throw new MeshError('MESH_BUILD_FAILED', `Build failed: ${final.error ?? 'unknown error'}`)
  }
  return final
}

function isFinished(build: Build): boolean {
  return build.status === 'succeeded' || build.status === 'failed'
}

/** Wait before attempt `attempt` (0-based): 0.5 s doubling to 5 s, ±20%. */
function backoff(attempt: number): number {
  const base = Math.min(FOLLOW_BACKOFF_MAX_MS, FOLLOW_BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 8))
  return Math.round(base * (0.8 + Math.random() * 0.4))
}

/** e.g. "connected, ready"; the lifecycle state is left out for agents that report none. */
function agentState(workspace: Workspace): string {
  if (workspace.agent === null) return '—'
  const state = workspace.agent.connected ? 'connected' : 'disconnected'
  const lifecycle = workspace.agent.lifecycle
  return lifecycle === undefined ? state : `${state}, ${lifecycle.replace('_', ' ')}`
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`
}

function usage(used: number, total: number): string {
  if (total <= 0) return '—'
  return `${formatBytes(used)} of ${formatBytes(total)} (${Math.round((100 * used) / total)}%)`
}

/** The stats rows of `show`. */
export function describeStats(stats: AgentStats): [string, string][] {
  const c = stats.connections
  return [
    ['CPU', `${stats.cpuPercent}% of ${stats.cpuCores} cores`],
    ['Memory', usage(stats.memoryUsedBytes, stats.memoryTotalBytes)],
    ['Disk', usage(stats.diskUsedBytes, stats.diskTotalBytes)],
    ['SSH sessions', String(stats.sshSessions)],
    ['Connections', `${c.direct} direct, ${c.relayed} relayed`],
    ['Traffic', `${formatBytes(stats.rxBytes)} in, ${formatBytes(stats.txBytes)} out`],
    ['Stats from', `${stats.time} (${timeAgo(stats.time)})`],
  ]
}

/** e.g. "8000/tcp python3 (0.0.0.0)", one port a line. */
export function describePorts(ports: readonly ListeningPort[]): string {
  if (ports.length === 0) return 'none'
  return ports
    .map(
      (p) =>
        `${p.port}/${p.network}${p.process === undefined ? '' : ` ${p.process}`} (${p.address})`,
    )
    .join('\n')
}

function agentRows(agent: AgentInfo): [string, string][] {
  const state = agent.connected ? 'connected' : 'disconnected'
  const rows: [string, string][] = [
    ['Agent', `${state}, version ${agent.version}, seen ${timeAgo(agent.lastSeenAt)}`],
  ]
  if (agent.lifecycle !== undefined) rows.push(['Lifecycle', agent.lifecycle])
  if (agent.startError !== undefined) rows.push(['Start error', agent.startError])
  rows.push(['Agent peer ID', agent.peerId])
  rows.push(['Agent addresses', agent.addrs.length > 0 ? agent.addrs.join('\n') : '—'])
  if (agent.stats !== undefined) rows.push(...describeStats(agent.stats))
  if (agent.ports !== undefined) rows.push(['Listening ports', describePorts(agent.ports)])
  return rows
}

/** e.g. "#3 start succeeded, 5m ago". */
export function describeBuild(build: Build | undefined): string {
  if (build === undefined) return '—'
  return `#${build.number} ${build.transition} ${build.status}, ${timeAgo(build.createdAt)}`
}

export function describeWorkspace(w: Workspace): string {
  const rows: [string, string][] = [
    ['Name', w.name],
    ['Owner', w.owner],
    ['Template', `${w.template} (version ${w.templateVersion})`],
    ['Status', w.status],
    ['Created', `${w.createdAt} (${timeAgo(w.createdAt)})`],
    ['Last build', describeBuild(w.latestBuild)],
  ]
  if (w.latestBuild?.error !== undefined) rows.push(['Build error', w.latestBuild.error])
  if (w.agent === null) rows.push(['Agent', 'none registered'])
  else rows.push(...agentRows(w.agent))
  const width = Math.max(...rows.map(([label]) => label.length)) + 2
  // Values come from the server: each line is made printable (a line break
  // in a build error stays one, indented under its label).
  return rows
    .map(([label, value]) =>
      value
        .split('\n')
        .map(
          (line, i) => (i === 0 ? `${label}:`.padEnd(width) : ' '.repeat(width)) + printable(line),
        )
        .join('\n'),
    )
    .join('\n')
    .concat('\n')
}
