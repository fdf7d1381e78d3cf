/**
 * Port-forward benchmark: throughput of one forwarded TCP stream, and the
 * time to the first byte of a new connection, on each path, next to raw
 * loopback TCP measured in the same run (trust the ratios more than the
 * absolute figures on a shared machine; see PROBES.md for anchors).
 *
 *   node bench/forward.ts [--mib 256] [--runs 3] [--connections 20]
 *
 * Every party is its own process, as in use: a real `coder-mesh server`
 * (coordinator and relay), a workspace of the shipped `local` template (a
 * real agent), one `coder-mesh port-forward` per path (`--path direct` and
 * `--path relay`), and a byte source (this file with `source`). This process
 * only reads: raw loopback reads the source directly, the forwards read it
 * through the agent.
 *
 * The source protocol: the client sends a u64 BE byte count, the source
 * answers with that many bytes and a FIN.
 */
import { execa, type ResultPromise } from 'execa'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { realpathSync } from 'node:fs'
import { connect, createServer, type AddressInfo } from 'node:net'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  BIN,
  cleanEnv,
  loginOwner,
  processesUnder,
  removeTree,
  startTestServer,
  type TestServer,
} from '../test/harness.ts'

const MiB = 1024 * 1024
const WORKSPACE = 'bench'

export interface ForwardBenchInit {
  /** Bytes per throughput run, in MiB. */
  mib: number
  /** Throughput runs per path (the median is reported). */
  runs: number
  /** New connections per path for the time to first byte. */
  connections: number
}

export interface PathResult {
  name: string
  /** Median throughput, 10^6 bytes a second. */
  mbps: number
  /** Time to first byte of a new connection, in ms. */
  ttfbMedian: number
  ttfbP90: number
}

/** The byte source: answers each connection's u64 BE count with that many bytes. */
async function runSource(): Promise<void> {
  const block = randomBytes(MiB)
  const server = createServer((socket) => {
    socket.setNoDelay(true)
    socket.on('error', () => undefined)
    socket.once('readable', function onReadable() {
      const head = socket.read(8) as Buffer | null
      if (head === null) {
        socket.once('readable', onReadable)
        return
      }
      let left = Number(head.readBigUInt64BE(0))
      const pump = (): void => {
        while (left > 0) {
          const chunk = left >= block.length ? block : block.subarray(0, left)
          left -= chunk.length
          if (!socket.write(chunk)) {
            socket.once('drain', pump)
            return
          }
        }
        socket.end()
      }
      pump()
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`)
}

function request(bytes: number): Buffer {
  const head = Buffer.alloc(8)
  head.writeBigUInt64BE(BigInt(bytes), 0)
  return head
}

/** Reads `bytes` from the source through `port`; resolves with MB/s. */
async function throughput(port: number, bytes: number): Promise<number> {
  const socket = connect(port, '127.0.0.1')
  socket.setNoDelay(true)
  await once(socket, 'connect')
  const start = performance.now()
  socket.write(request(bytes))
  let got = 0
  socket.on('data', (chunk: Buffer) => {
    got += chunk.length
  })
  await once(socket, 'end')
  const seconds = (performance.now() - start) / 1000
  socket.destroy()
  if (got !== bytes) throw new Error(`read ${got} of ${bytes} bytes through port ${port}`)
  return bytes / 1e6 / seconds
}

/** Time from connect() to the first byte of the answer, in ms. */
async function firstByte(port: number): Promise<number> {
  const start = performance.now()
  const socket = connect(port, '127.0.0.1')
  socket.setNoDelay(true)
  socket.write(request(1))
  await once(socket, 'data')
  const ms = performance.now() - start
  socket.destroy()
  return ms
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}

async function measure(name: string, port: number, init: ForwardBenchInit): Promise<PathResult> {
  await throughput(port, 8 * MiB) // warm-up: JIT, windows, the connection to the agent
  const rates: number[] = []
  for (let i = 0; i < init.runs; i++) rates.push(await throughput(port, init.mib * MiB))
  const ttfb: number[] = []
  for (let i = 0; i < init.connections; i++) ttfb.push(await firstByte(port))
  return {
    name,
    mbps: quantile(rates, 0.5),
    ttfbMedian: quantile(ttfb, 0.5),
    ttfbP90: quantile(ttfb, 0.9),
  }
}

/** Starts `coder-mesh port-forward` to the source; resolves with its local port. */
async function startForward(
  env: Record<string, string>,
  sourcePort: number,
  path: string,
): Promise<{ child: ResultPromise; port: number }> {
  const args = ['port-forward', WORKSPACE, '--tcp', `0:${sourcePort}`, '--path', path]
  const child = execa(BIN, args, { env, extendEnv: false, reject: false, buffer: false })
  let out = ''
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = /^Forwarding 127\.0\.0\.1:(\d+) /m.exec(out)
      if (match?.[1] !== undefined) resolve(Number(match[1]))
    })
    child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(chunk))
    void child.then((r) => reject(new Error(`port-forward --path ${path} exited ${r.exitCode}`)))
  })
  return { child, port }
}

async function startSource(): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    ['--disable-warning=ExperimentalWarning', fileURLToPath(import.meta.url), 'source'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const [line] = (await once(child.stdout!, 'data')) as [Buffer]
  return { child, port: Number(line.toString().trim()) }
}

/** Runs the benchmark and prints its table; resolves with the results. */
export async function runForwardBench(init: ForwardBenchInit): Promise<PathResult[]> {
  const log = (line: string): void => void process.stderr.write(line + '\n')
  const source = await startSource()
  let server: TestServer | undefined
  const forwards: ResultPromise[] = []
  try {
    log('starting a coordinator and a workspace of the local template...')
    server = await startTestServer()
    await loginOwner(server)
    for (const args of [
      ['templates', 'push', 'local'],
      ['create', WORKSPACE, '--template', 'local', '-y'],
    ]) {
      const r = await server.cli(args)
      if (r.exitCode !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`)
    }
    const env = cleanEnv(server.home, server.configDir)
    const direct = await startForward(env, source.port, 'direct')
    const relayed = await startForward(env, source.port, 'relay')
    forwards.push(direct.child, relayed.child)

    const results: PathResult[] = []
    for (const [name, port] of [
      ['raw loopback TCP', source.port],
      ['forward, direct (tcp)', direct.port],
      ['forward, relayed', relayed.port],
    ] as const) {
      log(`measuring ${name}...`)
      results.push(await measure(name, port, init))
    }
    printTable(results, init)
    return results
  } finally {
    for (const child of forwards) child.kill('SIGINT')
    await Promise.all(forwards)
    source.child.kill()
    if (server !== undefined) {
      await server.cli(['delete', WORKSPACE, '-y'])
      await server.stop()
      for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
      await removeTree(dirname(server.dataDir))
    }
  }
}

function printTable(results: PathResult[], init: ForwardBenchInit): void {
  const raw = results[0]?.mbps ?? NaN
  const rows = [
    ['path', 'MB/s', 'x raw', 'TTFB median', 'TTFB p90'],
    ...results.map((r) => [
      r.name,
      r.mbps.toFixed(1),
      (r.mbps / raw).toFixed(3),
      `${r.ttfbMedian.toFixed(2)} ms`,
      `${r.ttfbP90.toFixed(2)} ms`,
    ]),
  ]
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)))
  console.log(
    `one stream, ${init.mib} MiB per run, median of ${init.runs}; ` +
      `time to first byte over ${init.connections} new connections`,
  )
  for (const row of rows) {
    console.log(
      row
        .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
        .join('   '),
    )
  }
}

function isEntryPoint(): boolean {
  const script = process.argv[1]
  return (
    script !== undefined && realpathSync(script) === realpathSync(fileURLToPath(import.meta.url))
  )
}

if (isEntryPoint()) {
  if (process.argv[2] === 'source') {
    await runSource()
  } else {
    const { values } = parseArgs({
      options: {
        mib: { type: 'string', default: '256' },
        runs: { type: 'string', default: '3' },
        connections: { type: 'string', default: '20' },
      },
    })
    await runForwardBench({
      mib: Number(values.mib),
      runs: Number(values.runs),
      connections: Number(values.connections),
    })
  }
}
