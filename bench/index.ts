/**
 * `npm run bench`: coder-mesh side by side with what people would use
 * instead (OpenSSH, the raw network), every anchor measured in the same run
 * on the same machine. Prints a table and writes the run into
 * bench/RESULTS.md (between the markers of its mode; the text around them
 * is kept).
 *
 *   npm run bench                # full: a few minutes
 *   npm run bench -- --quick     # under two minutes
 *   npm run bench -- --only forward,ssh
 *   npm run bench -- --quick --only ssh --no-write --prof /tmp/prof
 *
 * Parts: footprint, ssh, forward, many, control. `--prof DIR` runs the CLI
 * processes the bench starts under `node --cpu-prof` (a ProxyCommand killed
 * by ssh writes none: profile `coder-mesh ssh NAME -- true` instead).
 * Each figure is the median of several runs with min–max; the machine is
 * shared, so trust the ratios more than the absolutes.
 */
import { Command, Option } from 'commander'
import { execa } from 'execa'
import { readFile, writeFile } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { startStunServer, type StunServer } from '../netstack/stun.ts'
import { BIN } from '../test/harness.ts'
import { runControlPlane } from './control-plane.ts'
import { startMesh, type Forward, type Mesh } from './mesh.ts'
import { INSTALL_HINT, SSHD_HOST, startOpenSsh, startSshForward, type OpenSsh } from './openssh.ts'
import { marginText, markdownReport, printTable, type Row, type Target } from './report.ts'
import { machine, repeat, rssMiB, summarize, type Summary } from './stats.ts'
import {
  echoLoad,
  firstByte,
  MiB,
  parallelThroughput,
  startTraffic,
  throughput,
  waitForPort,
  type TrafficServer,
} from './traffic.ts'

const PARTS = ['footprint', 'ssh', 'forward', 'many', 'control'] as const
type Part = (typeof PARTS)[number]

interface Plan {
  mode: 'full' | 'quick'
  parts: Set<Part>
  /** Runs per throughput or setup figure. */
  runs: number
  streamMiB: number
  bulkMiB: number
  sshRuns: number
  ttfbConnections: number
  /** 100 concurrent connections: MiB each, echo round trips each. */
  manyMiB: number
  manyRounds: number
  agentCounts: number[]
  apiSeconds: number
  cpuWindowMs: number
}

function plan(quick: boolean, only: Part[] | undefined): Plan {
  const parts = new Set<Part>(only ?? PARTS)
  return quick
    ? {
        mode: 'quick',
        parts,
        runs: 3,
        streamMiB: 48,
        bulkMiB: 128,
        sshRuns: 5,
        ttfbConnections: 10,
        manyMiB: 1,
        manyRounds: 20,
        agentCounts: [100],
        apiSeconds: 2,
        cpuWindowMs: 2000,
      }
    : {
        mode: 'full',
        parts,
        runs: 5,
        streamMiB: 256,
        bulkMiB: 1024,
        sshRuns: 10,
        ttfbConnections: 30,
        manyMiB: 8,
        manyRounds: 100,
        agentCounts: [100, 1000, 2000],
        apiSeconds: 10,
        cpuWindowMs: 15_000,
      }
}

const log = (line: string): void => void process.stderr.write(`bench: ${line}\n`)
const NODE = process.execPath

/** Time for `run` to complete, in ms, median of `runs`. */
function wall(runs: number, run: () => Promise<unknown>): Promise<Summary> {
  return repeat(runs, async () => {
    const t0 = performance.now()
    await run()
    return performance.now() - t0
  })
}

/** Resident memory of an idle process, median of samples a second apart, in MiB. */
async function idleRss(pid: number, samples = 5): Promise<Summary> {
  return repeat(samples, async () => {
    await new Promise((r) => setTimeout(r, 1000))
    return rssMiB(pid)
  })
}

async function footprint(p: Plan, mesh: Mesh): Promise<Row[]> {
  const section = 'footprint'
  const bare = execa(NODE, ['-e', 'setInterval(() => {}, 1e9)'], { reject: false })
  const bareRss = await idleRss(bare.pid!, 3)
  bare.kill()
  const agent = await mesh.agentPid('bench')
  const rows: Row[] = [
    agent === undefined
      ? { section, figure: 'idle agent RSS', unit: 'MiB', missing: 'agent pid not found' }
      : {
          section,
          figure: 'idle agent RSS',
          unit: 'MiB',
          value: await idleRss(agent),
          anchor: { name: 'bare Node', value: bareRss },
          note: 'the `local` template agent, before any traffic; target < 60 MiB',
        },
  ]
  const version = await wall(p.sshRuns, () => execa(BIN, ['--version'], { env: mesh.env }))
  const bareStart = await wall(p.sshRuns, () => execa(NODE, ['-e', '0']))
  rows.push({
    section,
    figure: 'CLI cold start (`coder-mesh --version`)',
    unit: 'ms',
    value: version,
    anchor: { name: '`node -e 0`', value: bareStart },
  })
  return rows
}

async function ssh(p: Plan, mesh: Mesh, openssh: OpenSsh): Promise<Row[]> {
  const section = 'ssh'
  const host = 'coder-mesh.bench'
  const hasSshd = openssh.sshd !== undefined
  const sshd = async (run: () => Promise<Summary>): Promise<Row['anchor']> =>
    hasSshd ? { name: 'sshd', value: await run() } : { name: `sshd (${INSTALL_HINT})` }
  const rows: Row[] = []

  log('ssh setup...')
  const meshSetup = await wall(p.sshRuns, () => openssh.ssh([host, 'true'], mesh.env))
  const sshdSetup = await sshd(() => wall(p.sshRuns, () => openssh.ssh([SSHD_HOST, 'true'])))
  rows.push({
    section,
    figure: `\`ssh ${host} true\` (ProxyCommand, cold)`,
    unit: 'ms',
    value: meshSetup,
    anchor: sshdSetup,
    note: 'ssh_config as config-ssh would write it, in a temp dir',
  })

  log('ssh setup with connect running...')
  const connect = await mesh.connect()
  try {
    // The first one makes connect's connection to the agent; the rest reuse it.
    await openssh.ssh([host, 'true'], mesh.env)
    rows.push({
      section,
      figure: `\`ssh ${host} true\` with \`connect\` running`,
      unit: 'ms',
      value: await wall(p.sshRuns, () => openssh.ssh([host, 'true'], mesh.env)),
      anchor: sshdSetup,
      note: 'the same ProxyCommand; it finds connect and uses its connection',
    })
  } finally {
    await connect.stop()
  }

  log(`ssh bulk, ${p.bulkMiB} MiB...`)
  const bytes = p.bulkMiB * MiB
  const bulk = (target: string, env?: Record<string, string>): Promise<Summary> =>
    repeat(p.runs >= 5 ? 3 : p.runs, async () => {
      const t0 = performance.now()
      await openssh.ssh([target, `head -c ${bytes} /dev/zero`], env)
      return bytes / 1e6 / ((performance.now() - t0) / 1000)
    })
  rows.push({
    section,
    figure: `ssh bulk \`head -c ${p.bulkMiB}M /dev/zero\``,
    unit: 'MB/s',
    value: await bulk(host, mesh.env),
    anchor: await sshd(() => bulk(SSHD_HOST)),
    note: 'wall time of the whole command, set-up included; default ciphers',
  })
  return rows
}

interface Paths {
  raw: number
  sshL?: number
  direct?: number
  webrtc?: number
  relayed?: number
  webrtcError?: string
}

async function forward(p: Plan, paths: Paths): Promise<Row[]> {
  const section = 'forward, one stream'
  const bytes = p.streamMiB * MiB
  // A path that fails (a truncated transfer, a dead forward) becomes a
  // missing row with its error; the other paths are still measured.
  const failures = new Map<number, string>()
  const measure = async (port: number | undefined): Promise<Summary | undefined> => {
    if (port === undefined) return undefined
    try {
      await throughput(port, 8 * MiB) // warm-up: JIT, windows, the connection to the agent
      return await repeat(p.runs, () => throughput(port, bytes))
    } catch (err) {
      failures.set(port, `failed: ${(err as Error).message}`)
      return undefined
    }
  }
  const failed = (port: number | undefined): string | undefined =>
    port === undefined ? undefined : failures.get(port)
  log('one stream: raw loopback...')
  const raw = (await measure(paths.raw))!
  log('one stream: ssh -L...')
  const sshL = await measure(paths.sshL)
  log('one stream: direct (tcp)...')
  const direct = await measure(paths.direct)
  log('one stream: direct (webrtc)...')
  const webrtc = await measure(paths.webrtc)
  log('one stream: relayed...')
  const relayed = await measure(paths.relayed)
  const xRaw = (s: Summary | undefined): string =>
    s === undefined ? '' : `${(s.median / raw.median).toFixed(3)}× raw loopback`
  const sshAnchor = { name: '`ssh -L`', value: sshL }
  const rows: Row[] = [
    { section, figure: 'raw loopback TCP', unit: 'MB/s', value: raw },
    sshL === undefined
      ? {
          section,
          figure: '`ssh -L` (OpenSSH)',
          unit: 'MB/s',
          missing: failed(paths.sshL) ?? INSTALL_HINT,
        }
      : {
          section,
          figure: '`ssh -L` (OpenSSH)',
          unit: 'MB/s',
          value: sshL,
          anchor: { name: 'raw', value: raw },
        },
    {
      section,
      figure: '`port-forward`, direct (tcp)',
      unit: 'MB/s',
      value: direct,
      missing: failed(paths.direct),
      anchor: sshAnchor,
      note: xRaw(direct),
    },
    webrtc === undefined
      ? {
          section,
          figure: 'forward, direct (webrtc)',
          unit: 'MB/s',
          missing: failed(paths.webrtc) ?? paths.webrtcError ?? 'no WebRTC path',
        }
      : {
          section,
          figure: 'forward, direct (webrtc)',
          unit: 'MB/s',
          value: webrtc,
          anchor: sshAnchor,
          note: `${xRaw(webrtc)}; bench/webrtc-forward.ts`,
        },
    {
      section,
      figure: '`port-forward`, relayed',
      unit: 'MB/s',
      value: relayed,
      missing: failed(paths.relayed),
      anchor: { name: 'direct (tcp)', value: direct },
      note: xRaw(relayed),
    },
  ]

  log('time to first byte...')
  const ttfb = (port: number | undefined): Promise<Summary> | undefined =>
    port === undefined ? undefined : repeat(p.ttfbConnections, () => firstByte(port))
  const rawTtfb = await ttfb(paths.raw)
  for (const [name, port] of [
    ['`ssh -L`', paths.sshL],
    ['`port-forward`, direct (tcp)', paths.direct],
    ['`port-forward`, relayed', paths.relayed],
  ] as const) {
    const value = await ttfb(port)
    rows.push({
      section: 'forward, new connection',
      figure: `${name}: connect to first byte`,
      unit: 'ms',
      value,
      missing: value === undefined ? INSTALL_HINT : undefined,
      anchor: { name: 'raw', value: rawTtfb },
    })
  }
  return rows
}

async function many(p: Plan, traffic: TrafficServer, paths: Paths, echo: Paths): Promise<Row[]> {
  const section = '100 connections at once'
  const streams = 100
  const rows: Row[] = []
  const bulk = (port: number | undefined): Promise<Summary> | undefined =>
    port === undefined
      ? undefined
      : repeat(p.runs, () => parallelThroughput(port, streams, p.manyMiB * MiB))
  log('100 streams...')
  const raw = await bulk(traffic.source)
  const sshL = await bulk(paths.sshL)
  const direct = await bulk(paths.direct)
  rows.push(
    {
      section,
      figure: `total throughput, ${p.manyMiB} MiB each: \`ssh -L\``,
      unit: 'MB/s',
      value: sshL,
      missing: sshL === undefined ? INSTALL_HINT : undefined,
      anchor: { name: 'raw', value: raw },
    },
    {
      section,
      figure: `total throughput, ${p.manyMiB} MiB each: direct`,
      unit: 'MB/s',
      value: direct,
      anchor: { name: '`ssh -L`', value: sshL },
    },
  )
  log('100 echo connections...')
  const load = async (port: number | undefined) => {
    if (port === undefined) return undefined
    const runs = []
    for (let i = 0; i < p.runs; i++) runs.push(await echoLoad(port, streams, p.manyRounds))
    return {
      p99: summarize(runs.map((r) => r.p99)),
      first: summarize(runs.map((r) => r.firstP99)),
      rate: summarize(runs.map((r) => r.perSecond)),
    }
  }
  const rawEcho = await load(traffic.echo)
  const sshEcho = await load(echo.sshL)
  const directEcho = await load(echo.direct)
  const relayedEcho = await load(echo.relayed)
  for (const [name, r, anchor] of [
    ['`ssh -L`', sshEcho, { name: 'raw', value: rawEcho?.p99 }],
    ['direct', directEcho, { name: '`ssh -L`', value: sshEcho?.p99 }],
    ['relayed', relayedEcho, { name: '`ssh -L`', value: sshEcho?.p99 }],
  ] as const) {
    rows.push({
      section,
      figure: `64 B request/response p99: ${name}`,
      unit: 'ms',
      value: r?.p99,
      missing: r === undefined ? INSTALL_HINT : undefined,
      anchor,
      note: r === undefined ? undefined : `${r.rate.median.toFixed(0)} round trips/s`,
    })
  }
  for (const [name, r, anchor] of [
    ['`ssh -L`', sshEcho, { name: 'raw', value: rawEcho?.first }],
    ['direct', directEcho, { name: '`ssh -L`', value: sshEcho?.first }],
    ['relayed', relayedEcho, { name: '`ssh -L`', value: sshEcho?.first }],
  ] as const) {
    rows.push({
      section,
      figure: `first exchange p99 (opens the stream): ${name}`,
      unit: 'ms',
      value: r?.first,
      missing: r === undefined ? INSTALL_HINT : undefined,
      anchor,
    })
  }
  return rows
}

/**
 * One target: `value` against its `line`, where `better` says which side
 * of the line meets it; the margin is oriented so that above 1 is met.
 */
function judgeTarget(
  target: string,
  value: number | undefined,
  line: number,
  better: 'higher' | 'lower',
  measured: (value: number) => string,
): Target {
  if (value === undefined) return { target, measured: 'not measured' }
  const margin = better === 'higher' ? value / line : line / value
  return { target, measured: measured(value), met: margin >= 1, margin }
}

function judge(rows: Row[]): Target[] {
  const find = (figure: string): Summary | undefined => rows.find((r) => r.figure === figure)?.value
  const ratio = (a?: Summary, b?: Summary): number | undefined =>
    a === undefined || b === undefined ? undefined : a.median / b.median
  const toAnchor = (ending: string): number | undefined => {
    const row = rows.find((r) => r.figure.endsWith(ending))
    return ratio(row?.value, row?.anchor?.value)
  }
  const pct = (x: number): string => `${(x * 100).toFixed(0)}%`
  const timesSshd = (x: number): string => `${x.toFixed(2)}× the time of sshd`
  const direct = find('`port-forward`, direct (tcp)')
  const tenKMeasured = find('10000 agents: coordinator RSS')
  const tenK = tenKMeasured ?? find('10,000 agents: coordinator RSS, extrapolated')

  return [
    judgeTarget(
      'one forwarded stream, direct: at least `ssh -L`',
      ratio(direct, find('`ssh -L` (OpenSSH)')),
      1,
      'higher',
      (x) => `${pct(x)} of \`ssh -L\``,
    ),
    judgeTarget(
      'relayed: at least half of direct',
      ratio(find('`port-forward`, relayed'), direct),
      0.5,
      'higher',
      (x) => `${pct(x)} of direct`,
    ),
    judgeTarget(
      '`ssh coder-mesh.NAME true` no slower than `ssh` to sshd',
      toAnchor('true` (ProxyCommand, cold)'),
      1,
      'lower',
      timesSshd,
    ),
    judgeTarget(
      'the same, with `connect` running',
      toAnchor('with `connect` running'),
      1,
      'lower',
      timesSshd,
    ),
    judgeTarget(
      'idle agent under 60 MiB',
      find('idle agent RSS')?.median,
      60,
      'lower',
      (x) => `${x.toFixed(0)} MiB`,
    ),
    {
      target: 'memory bounded whatever the reader speed',
      measured: 'not in the bench: client/mesh-commands.test.ts (1 GiB to a stalling reader)',
    },
    judgeTarget(
      '10,000 simulated agents within 2 GiB',
      tenK?.median,
      2048,
      'lower',
      (x) => `${x.toFixed(0)} MiB${tenKMeasured === undefined ? ', extrapolated' : ''}`,
    ),
  ]
}

const METHOD = [
  'Every party is its own process: the byte source and echo service, sshd (Debian ' +
    'openssh-server, `sshd -D -f CONFIG -e` with a throwaway key), `ssh -L`, ' +
    '`coder-mesh server`, the agents of `local`-template workspaces built by Terraform, ' +
    'one `coder-mesh port-forward` per path, and the bench process, which only reads. ' +
    'OpenSSH runs with its default ciphers on both sides of each comparison.',
  'WebRTC path: the agent of a second workspace runs with CODER_MESH_ICE_SERVERS naming a ' +
    'STUN responder (netstack/stun.ts) on 127.0.0.1; bench/webrtc-forward.ts dials it through ' +
    'the relay and upgrades to WebRTC, then forwards with the CLI’s pieces.',
  'A simulated agent (bench/agents-sim.ts) is what the coordinator sees of an agent: its ' +
    'own libp2p node and peer id, HTTP registration and heartbeats with its own agent token, ' +
    'and a libp2p connection to the relay holding a reservation (agent/relays.ts). Their ' +
    'workspaces are clones of one workspace built through the API, written into the ' +
    'stopped coordinator’s store (bench/control-plane.ts). Each step starts fresh agents.',
]

/** The command line as RESULTS.md shows it: where the results went is not part of it. */
function argsWithoutOutput(args: string[]): string[] {
  const kept: string[] = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? ''
    if (arg === '--output') i++
    else if (!arg.startsWith('--output=')) kept.push(arg)
  }
  return kept
}

const START = (mode: string): string => `<!-- bench:${mode}:start -->`
const END = (mode: string): string => `<!-- bench:${mode}:end -->`

/** Replaces this mode's block in RESULTS.md (appending it when absent). */
async function writeResults(file: string, mode: string, body: string): Promise<void> {
  const text = await readFile(file, 'utf8').catch(() => '# Benchmark results\n')
  const block = `${START(mode)}\n${body}\n${END(mode)}`
  const a = text.indexOf(START(mode))
  const b = text.indexOf(END(mode))
  const next =
    a !== -1 && b > a
      ? text.slice(0, a) + block + text.slice(b + END(mode).length)
      : `${text.trimEnd()}\n\n${block}\n`
  await writeFile(file, next)
}

async function main(): Promise<void> {
  const program = new Command('bench')
    .description('coder-mesh side by side with OpenSSH and the raw network')
    .option('--quick', 'fewer and smaller runs (under two minutes)', false)
    .addOption(
      new Option('--only <parts>', `comma-separated: ${PARTS.join(', ')}`).argParser((v) =>
        v.split(',').map((s) => {
          if (!(PARTS as readonly string[]).includes(s)) throw new Error(`unknown part ${s}`)
          return s as Part
        }),
      ),
    )
    .option(
      '--output <file>',
      'results file',
      fileURLToPath(new URL('RESULTS.md', import.meta.url)),
    )
    .option('--no-write', 'print only')
    .option('--prof <dir>', 'run the CLI processes (ProxyCommand, port-forward) under --cpu-prof')
  program.parse()
  const opts = program.opts<{
    quick: boolean
    only?: Part[]
    output: string
    write: boolean
    prof?: string
  }>()
  const p = plan(opts.quick, opts.only)
  const started = performance.now()
  const date = new Date()
  const host = machine()

  const traffic = await startTraffic()
  let openssh: OpenSsh | undefined
  let mesh: Mesh | undefined
  let stun: StunServer | undefined
  const rows: Row[] = []
  const forwards: Forward[] = []
  try {
    log('starting sshd, a coordinator and workspaces...')
    openssh = await startOpenSsh(BIN)
    if (openssh.sshd === undefined) log(INSTALL_HINT)
    mesh = await startMesh()
    if (opts.prof !== undefined) mesh.env.NODE_OPTIONS = `--cpu-prof --cpu-prof-dir=${opts.prof}`
    await mesh.createWorkspace('bench')
    const wantPaths = p.parts.has('forward') || p.parts.has('many')
    if (p.parts.has('forward')) {
      stun = await startStunServer({ host: '127.0.0.1' })
      await mesh.createWorkspace('bench-rtc', `stun:127.0.0.1:${stun.port}`)
    }

    if (p.parts.has('footprint')) rows.push(...(await footprint(p, mesh)))
    if (p.parts.has('ssh')) rows.push(...(await ssh(p, mesh, openssh)))

    if (wantPaths) {
      const paths: Paths = { raw: traffic.source }
      const echo: Paths = { raw: traffic.echo }
      const start = async (target: number, into: Paths): Promise<void> => {
        if (openssh?.sshd !== undefined) {
          const f = await startSshForward(openssh, SSHD_HOST, target)
          forwards.push(f)
          await waitForPort(f.port)
          into.sshL = f.port
        }
        const direct = await mesh!.forward('bench', target, 'direct')
        const relayed = await mesh!.forward('bench', target, 'relay')
        forwards.push(direct, relayed)
        into.direct = direct.port
        into.relayed = relayed.port
      }
      await start(traffic.source, paths)
      await start(traffic.echo, echo)
      if (stun !== undefined) {
        try {
          const ice = `stun:127.0.0.1:${stun.port}`
          const f = await mesh.webrtcForward('bench-rtc', traffic.source, ice)
          forwards.push(f)
          paths.webrtc = f.port
        } catch (err) {
          paths.webrtcError = (err as Error).message
        }
      }
      if (p.parts.has('forward')) rows.push(...(await forward(p, paths)))
      if (p.parts.has('many')) rows.push(...(await many(p, traffic, paths, echo)))
      for (const f of forwards.splice(0)) f.child.kill('SIGINT')
    }

    if (p.parts.has('control')) {
      rows.push(
        ...(await runControlPlane(mesh, {
          counts: p.agentCounts,
          seed: 'bench',
          apiSeconds: p.apiSeconds,
          stepTimeoutMs: p.mode === 'quick' ? 60_000 : 300_000,
          cpuWindowMs: p.cpuWindowMs,
        })),
      )
    }
  } finally {
    for (const f of forwards) f.child.kill('SIGINT')
    await Promise.all(forwards.map((f) => f.child))
    await mesh?.stop().catch((err: unknown) => log(`stopping the mesh: ${String(err)}`))
    await openssh?.stop()
    await stun?.close()
    traffic.child.kill()
  }

  printTable(rows)
  const targets = judge(rows)
  for (const t of targets) {
    const met = t.met === undefined ? 'not judged' : t.met ? 'met' : 'NOT met'
    const margin = marginText(t.margin)
    console.log(`target: ${t.target}: ${t.measured} (${met}${margin === '' ? '' : `, ${margin}`})`)
  }
  if (opts.write) {
    const [l1 = 0, l5 = 0, l15 = 0] = loadavg()
    const body = markdownReport({
      mode: p.mode,
      args: argsWithoutOutput(process.argv.slice(2)),
      date,
      machine: host,
      loadAfter: [l1, l5, l15],
      durationSeconds: (performance.now() - started) / 1000,
      rows,
      targets,
      method: METHOD,
    })
    // A run of some parts only gets a block of its own, beside the whole run.
    const key = opts.only === undefined ? p.mode : `${p.mode}:${opts.only.join('+')}`
    await writeResults(opts.output, key, body)
    log(`wrote ${opts.output}`)
  }
}

await main()
