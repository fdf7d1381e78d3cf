/**
 * Simulated workspace agents for the control-plane figures. A simulated
 * agent does what a real one does to the coordinator, and nothing else:
 *
 * - its own libp2p node (netstack/node.ts, as the agent builds it, without
 *   a TCP listener of its own or SSH) and so its own peer id;
 * - registers over HTTP with its own agent token (`POST /agent/register`,
 *   sdk/api-client.ts), then keeps heartbeating at the period the
 *   coordinator answers;
 * - reports its lifecycle, stats and listening ports every
 *   REPORT_INTERVAL_MS (`POST /api/v1/agent/report`), as agent/lifecycle.ts does;
 * - holds a libp2p connection to the relay and a relay reservation on it
 *   (agent/relays.ts, the agent's own code).
 *
 *   BENCH_URL=... node bench/agents-sim.ts TOKEN_FILE
 *
 * TOKEN_FILE holds one agent token a line. Prints one JSON line per 100
 * agents ready, then `{"done":N,"failed":F}`, and keeps them connected
 * until SIGTERM.
 */
import { readFile } from 'node:fs/promises'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { REPORT_INTERVAL_MS } from '../agent/lifecycle.ts'
import { registerUntilDone } from '../agent/register.ts'
import { RelayKeeper } from '../agent/relays.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { ApiClient } from '../sdk/api-client.ts'
import type { AgentReportRequest } from '../sdk/api-types.ts'
import { createLogger } from '../sdk/logger.ts'

/** Agents starting at once in this process. */
const CONCURRENCY = 25
/** How long one agent may take to register, and then to get its reservation, in ms. */
const RESERVE_TIMEOUT_MS = 120_000

const url = process.env.BENCH_URL ?? ''
const tokens = (await readFile(process.argv[2] ?? '', 'utf8')).split('\n').filter(Boolean)
const log = createLogger('bench:sim-agent', 'error')
const nodes: MeshNode[] = []
const timers: NodeJS.Timeout[] = []
let ready = 0
let failed = 0

async function simulate(token: string): Promise<void> {
  const privateKey = await newPeerKey()
  const node = await createMeshNode({ privateKey, listen: [], webrtc: false })
  nodes.push(node)
  const api = new ApiClient({ url, token })
  const body = { peerId: peerIdFromPrivateKey(privateKey).toString(), addrs: [], version: 'bench' }
  // Retried with backoff while the coordinator cannot answer, as the agent does.
  const answer = await registerUntilDone(api, body, log, AbortSignal.timeout(RESERVE_TIMEOUT_MS))
  // As the agent does: the keeper reserves, and retries with backoff what
  // fails (a relay refusing a burst of new connections, for one).
  const keeper = new RelayKeeper(node, log)
  keeper.setRelays(answer.relays)
  const deadline = Date.now() + RESERVE_TIMEOUT_MS
  while (!answer.relays.every((r) => keeper.isReserved(r))) {
    if (Date.now() > deadline) throw new Error('no relay reservation in time')
    await new Promise((r) => setTimeout(r, 50))
  }
  every(answer.heartbeatSeconds * 1000, () => api.registerAgent(body))
  every(REPORT_INTERVAL_MS, () => api.reportAgent(report()))
}

/** Runs `send` every `period` ms, from a random point of the first period on. */
function every(period: number, send: () => Promise<unknown>): void {
  // Spread over the period, as agents that started at different times are.
  const first = setTimeout(() => {
    timers.push(setInterval(() => void send().catch(() => undefined), period))
  }, Math.random() * period)
  timers.push(first)
}

/** A report the size of a real agent's: lifecycle, stats and a few listening ports. */
function report(): AgentReportRequest {
  const stats = {
    time: new Date().toISOString(),
    cpuPercent: 3.5,
    cpuCores: 2,
    memoryUsedBytes: 1_234_567_890,
    memoryTotalBytes: 25_000_000_000,
    diskUsedBytes: 98_765_432_100,
    diskTotalBytes: 250_000_000_000,
    sshSessions: 1,
    connections: { direct: 1, relayed: 0 },
    rxBytes: 123_456_789,
    txBytes: 987_654_321,
  }
  const ports = [22, 3000, 8080].map((port) => ({
    port,
    network: 'tcp' as const,
    address: '0.0.0.0',
    process: 'node',
  }))
  return { lifecycle: 'ready', stats, ports }
}

let next = 0
await Promise.all(
  Array.from({ length: CONCURRENCY }, async () => {
    while (next < tokens.length) {
      const token = tokens[next++]!
      try {
        await simulate(token)
        ready++
        if (ready % 100 === 0) process.stdout.write(`${JSON.stringify({ ready })}\n`)
      } catch (err) {
        failed++
        if (failed <= 3) process.stderr.write(`simulated agent: ${(err as Error).message}\n`)
      }
    }
  }),
)
process.stdout.write(`${JSON.stringify({ done: ready, failed })}\n`)

process.on('SIGTERM', () => {
  for (const t of timers) clearTimeout(t)
  void Promise.allSettled(nodes.map((n) => n.stop())).finally(() => process.exit(0))
})
