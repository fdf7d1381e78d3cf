/**
 * Control-plane figures: N simulated agents (bench/agents-sim.ts says what
 * one is) held connected to one coordinator, its memory and CPU, the time
 * to connect them all, and the workspace list's latency under load.
 *
 * Each simulated agent needs a workspace of its own: an agent token names
 * exactly one workspace, and registering a second agent for it replaces the
 * first. Building thousands of workspaces with Terraform would take hours,
 * so the bench clones the one real workspace it built through the API:
 * with the coordinator stopped, it writes N workspace records (copies of
 * the real one, with their own ids, names and agent tokens) straight into
 * its store, as the start build would have, and starts it again. Everything
 * after that is the real coordinator, over HTTP and libp2p.
 */
import autocannon from 'autocannon'
import { execa, type ResultPromise } from 'execa'
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { hashToken, newAgentToken } from '../coordinator/secrets.ts'
import { openStore } from '../coordinator/store.ts'
import { ROOT } from '../test/harness.ts'
import type { Mesh } from './mesh.ts'
import type { Row } from './report.ts'
import { cpuSeconds, rssMiB, summarize, type Summary } from './stats.ts'

/** Agents one simulator process carries. */
const AGENTS_PER_PROCESS = 500
const SECTION = 'control plane'

export interface ControlPlaneInit {
  /** Agent counts, one step each (fresh agents per step). */
  counts: number[]
  /** A running workspace to clone. */
  seed: string
  /** autocannon duration per latency run, in s. */
  apiSeconds: number
  /** Give up a step that takes longer, in ms. */
  stepTimeoutMs: number
  /** How long CPU is sampled once the agents are connected, in ms. */
  cpuWindowMs: number
}

/** Writes `count` clones of workspace `seed` into the stopped coordinator's store. */
async function seedWorkspaces(mesh: Mesh, seed: string, count: number): Promise<string[]> {
  await mesh.server.stop()
  const store = await openStore(mesh.server.dataDir)
  const tokens: string[] = []
  try {
    let original
    for await (const ws of store.workspaces.values()) if (ws.name === seed) original = ws
    if (original === undefined) throw new Error(`no workspace ${seed} to clone`)
    const batch = store.batch()
    for (let i = 0; i < count; i++) {
      const token = newAgentToken()
      const hash = hashToken(token)
      const id = randomUUID()
      const name = `sim-${i}`
      // No agent yet: the simulated one registers like a freshly built workspace's.
      const clone = { ...original, id, name, agentTokenHash: hash }
      delete clone.agent
      batch.put(store.workspaces, id, clone)
      batch.put(store.workspaceNames, `${original.ownerId}/${name}`, id)
      batch.put(store.agentTokens, hash, id)
      tokens.push(token)
    }
    await batch.write({ sync: true })
  } finally {
    await store.close()
  }
  await mesh.server.restart()
  return tokens
}

interface Simulation {
  children: ResultPromise[]
  /** Agents that failed to connect. */
  failed: number
  ms: number
}

async function simulate(mesh: Mesh, tokenFiles: string[], timeoutMs: number): Promise<Simulation> {
  const start = performance.now()
  let failed = 0
  const children = tokenFiles.map((file) =>
    execa(
      process.execPath,
      [
        '--disable-warning=ExperimentalWarning',
        '--max-old-space-size=4096',
        join(ROOT, 'bench', 'agents-sim.ts'),
        file,
      ],
      {
        env: { BENCH_URL: mesh.server.url, PATH: process.env.PATH ?? '' },
        extendEnv: false,
        reject: false,
        buffer: false,
        stderr: 'inherit',
      },
    ),
  )
  const timer = setTimeout(() => children.forEach((c) => c.kill('SIGTERM')), timeoutMs)
  const all = Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve, reject) => {
          let out = ''
          child.stdout?.on('data', (chunk: Buffer) => {
            out += chunk.toString()
            const done = /\{"done":(\d+),"failed":(\d+)\}/.exec(out)
            if (done !== null) {
              failed += Number(done[2])
              resolve()
            }
          })
          void child.then((r) => reject(new Error(`agent simulator exited ${r.exitCode}`)))
        }),
    ),
  )
  try {
    await all
  } catch (err) {
    for (const child of children) child.kill('SIGTERM')
    await Promise.all(children)
    throw err
  } finally {
    clearTimeout(timer)
  }
  return { children, failed, ms: performance.now() - start }
}

async function stopSimulation(sim: Simulation): Promise<void> {
  for (const child of sim.children) child.kill('SIGTERM')
  await Promise.all(sim.children)
}

/** GET /api/v1/workspaces under autocannon's load: p50 and p99 in ms, requests a second. */
async function listLatency(
  mesh: Mesh,
  seconds: number,
): Promise<{ p50: number; p99: number; rps: number }> {
  const result = await autocannon({
    url: `${mesh.server.url}/api/v1/workspaces`,
    connections: 10,
    duration: seconds,
    headers: { authorization: `Bearer ${mesh.token}` },
  })
  if (result.non2xx > 0 || result.errors > 0) {
    throw new Error(`workspace list: ${result.non2xx} non-2xx answers, ${result.errors} errors`)
  }
  return { p50: result.latency.p50, p99: result.latency.p99, rps: result.requests.average }
}

/** The coordinator's own gauge, from /metrics. */
async function metric(mesh: Mesh, name: string): Promise<number> {
  const text = await (await fetch(`${mesh.server.url}/metrics`)).text()
  const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  return match?.[1] === undefined ? NaN : Number(match[1])
}

interface Sample {
  rss: number
  /** Share of one core over the sampling window, in %. */
  cpu: number
}

async function sampleCoordinator(pid: number, windowMs: number): Promise<Sample> {
  const cpu0 = cpuSeconds(pid)
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, windowMs))
  const cpu = ((cpuSeconds(pid) - cpu0) / ((performance.now() - t0) / 1000)) * 100
  return { rss: rssMiB(pid), cpu }
}

const one = (x: number): Summary => summarize([x])

export async function runControlPlane(mesh: Mesh, init: ControlPlaneInit): Promise<Row[]> {
  const max = Math.max(...init.counts)
  const tokens = await seedWorkspaces(mesh, init.seed, max)
  const pid = mesh.server.process.pid
  if (pid === undefined) throw new Error('no coordinator pid')
  const dir = dirname(mesh.server.dataDir)

  const baseline = await sampleCoordinator(pid, init.cpuWindowMs)
  const baseLatency = await listLatency(mesh, init.apiSeconds)
  // The anchor for "time to connect all": one agent with the coordinator to itself.
  const alone = join(dir, 'tokens-alone.txt')
  await writeFile(alone, tokens[0]!)
  const single = await simulate(mesh, [alone], init.stepTimeoutMs)
  await stopSimulation(single)
  const rows: Row[] = []
  let lastGood: { count: number; rss: number } | undefined

  for (const count of init.counts) {
    process.stderr.write(`connecting ${count} simulated agents...\n`)
    const files: string[] = []
    for (let i = 0; i < count; i += AGENTS_PER_PROCESS) {
      const file = join(dir, `tokens-${count}-${i}.txt`)
      await writeFile(file, tokens.slice(i, Math.min(count, i + AGENTS_PER_PROCESS)).join('\n'))
      files.push(file)
    }
    let sim: Simulation | undefined
    try {
      sim = await simulate(mesh, files, init.stepTimeoutMs)
      const reservations = await metric(mesh, 'coder_mesh_relay_reservations')
      const sample = await sampleCoordinator(pid, init.cpuWindowMs)
      const latency = await listLatency(mesh, init.apiSeconds)
      const label = `${count} agents`
      const note =
        `${count - sim.failed} of ${count} connected; relay reservations ` +
        `${reservations}; list ${latency.rps.toFixed(0)} req/s`
      rows.push(
        {
          section: SECTION,
          figure: `${label}: time to connect all`,
          unit: 's',
          value: one(sim.ms / 1000),
          anchor: { name: 'one agent alone', value: one(single.ms / 1000) },
          note,
        },
        {
          section: SECTION,
          figure: `${label}: coordinator RSS`,
          unit: 'MiB',
          value: one(sample.rss),
          anchor: { name: 'no simulated agents', value: one(baseline.rss) },
        },
        {
          section: SECTION,
          figure: `${label}: coordinator CPU, held`,
          unit: '% core',
          value: one(sample.cpu),
          anchor: { name: 'no simulated agents', value: one(baseline.cpu) },
        },
        {
          section: SECTION,
          figure: `${label}: workspace list p50`,
          unit: 'ms',
          value: one(latency.p50),
          anchor: { name: 'no simulated agents', value: one(baseLatency.p50) },
        },
        {
          section: SECTION,
          figure: `${label}: workspace list p99`,
          unit: 'ms',
          value: one(latency.p99),
          anchor: { name: 'no simulated agents', value: one(baseLatency.p99) },
        },
      )
      if (sim.failed === 0) lastGood = { count, rss: sample.rss }
    } catch (err) {
      rows.push({
        section: SECTION,
        figure: `${count} agents`,
        unit: '',
        missing: (err as Error).message,
      })
      break
    } finally {
      if (sim !== undefined) await stopSimulation(sim)
    }
  }
  if (lastGood !== undefined) {
    // Linear in the agents held: what each costs above the idle coordinator.
    const perAgent = (lastGood.rss - baseline.rss) / lastGood.count
    rows.push({
      section: SECTION,
      figure: '10,000 agents: coordinator RSS, extrapolated',
      unit: 'MiB',
      value: one(baseline.rss + perAgent * 10_000),
      anchor: { name: 'the 2 GiB target', value: one(2048) },
      note: `from ${lastGood.count} agents: ${(perAgent * 1024).toFixed(0)} KiB per agent`,
    })
  }
  return rows
}
