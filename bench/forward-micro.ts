/**
 * The port forward's data path alone, for profiling and for before/after
 * figures that need no coordinator: an "agent" process serving the tcp
 * protocol with the agent's own handler (agent/forward.ts) behind the real
 * ticket check (netstack/serve.ts), and a "client" process that forwards
 * local connections to it as client/port-forward.ts does (ticketed stream,
 * request, status, netstack/bridge.ts), over one direct libp2p connection
 * (TCP, Noise, Yamux as netstack/node.ts builds it). The ticket key is
 * made here instead of by a coordinator.
 *
 *   node bench/forward-micro.ts [--mib 256] [--runs 5] [--prof DIR] [--verbose]
 *
 * With --prof, the processes run under `node --cpu-prof` and write their
 * profiles into DIR as agent, client and echo-client (open them in Chrome
 * DevTools or speedscope, or read them with bench/profile-summary.ts).
 * --verbose prints each throughput run with the CPU time and the read and
 * write system calls each process spent per MiB.
 */
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Command } from 'commander'
import { execa, type ResultPromise } from 'execa'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { createForwardHandler } from '../agent/forward.ts'
import { TCP_PROTOCOL } from '../netstack/constants.ts'
import { bridge } from '../netstack/bridge.ts'
import { dialAgent, openMeshStream } from '../netstack/dial.ts'
import { encodeForwardRequest, readForwardStatus } from '../netstack/forward.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode } from '../netstack/node.ts'
import { serveMeshProtocol } from '../netstack/serve.ts'
import {
  exportTicketPrivateKey,
  importTicketPrivateKey,
  newTicketKeyPair,
  signTicket,
} from '../netstack/ticket.ts'
import { createLogger } from '../sdk/logger.ts'
import { formatSummary } from './report.ts'
import { cpuSeconds, repeat, summarize, syscallCount } from './stats.ts'
import { echoLoad, MiB, startTraffic, throughput } from './traffic.ts'

const SELF = fileURLToPath(import.meta.url)

function exitOnSignal(stop: () => unknown): void {
  // A clean exit, so --cpu-prof writes its profile.
  process.once('SIGINT', () => void Promise.resolve(stop()).finally(() => process.exit(0)))
}

/** The agent: prints `PEER ADDR`. */
async function agent(): Promise<void> {
  const keys = importTicketPrivateKey(process.env.BENCH_TICKET_KEY ?? '')
  const privateKey = await newPeerKey()
  const node = await createMeshNode({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], webrtc: false })
  const log = createLogger('bench:agent', 'error')
  const authority = { publicKey: () => keys.publicKey, agentPeerId: node.peerId.toString() }
  await serveMeshProtocol(node, TCP_PROTOCOL, authority, createForwardHandler(), log)
  process.stdout.write(`${node.peerId.toString()} ${node.getMultiaddrs()[0]!.toString()}\n`)
  exitOnSignal(() => node.stop())
}

/** The client: prints `Forwarding 127.0.0.1:PORT`. */
async function client(addr: string, remote: number): Promise<void> {
  const keys = importTicketPrivateKey(process.env.BENCH_TICKET_KEY ?? '')
  const privateKey = await newPeerKey()
  const node = await createMeshNode({ privateKey, listen: [], webrtc: false })
  const [agentAddr = '', agentPeer = ''] = addr.split('/p2p/')
  // As the CLI dials: through the transport manager, the agent's address as given.
  const connection = await dialAgent(node, { peerId: agentPeer, addrs: [agentAddr], relays: [] })
  const ticket = signTicket(
    {
      v: 1,
      client: peerIdFromPrivateKey(privateKey).toString(),
      agent: connection.remotePeer.toString(),
      workspace: 'bench',
      user: 'bench',
      exp: Date.now() + 3_600_000,
    },
    keys.privateKey,
  )
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    socket.on('error', () => undefined)
    void (async () => {
      const duplex = await openMeshStream(connection, TCP_PROTOCOL, ticket)
      duplex.on('error', () => undefined)
      duplex.write(encodeForwardRequest(remote))
      if (!(await readForwardStatus(duplex))) throw new Error('refused')
      await bridge(socket, duplex)
    })().catch(() => socket.resetAndDestroy())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  process.stdout.write(`Forwarding 127.0.0.1:${(server.address() as AddressInfo).port}\n`)
  exitOnSignal(() => node.stop())
}

async function firstLine(child: ResultPromise): Promise<string> {
  const [chunk] = (await once(child.stdout!, 'data')) as [Buffer]
  return chunk.toString().trim()
}

async function main(): Promise<void> {
  const opts = new Command('forward-micro')
    .option('--mib <n>', 'MiB per throughput run', '256')
    .option('--runs <n>', 'throughput runs', '5')
    .option('--prof <dir>', 'write CPU profiles of both processes here')
    .option('--verbose', 'print each run: CPU and system calls per MiB of each process')
    .parse()
    .opts<{ mib: string; runs: string; prof?: string; verbose?: boolean }>()
  const mib = Number(opts.mib)
  const traffic = await startTraffic()
  const env = {
    ...process.env,
    BENCH_TICKET_KEY: exportTicketPrivateKey(newTicketKeyPair().privateKey),
  }
  // The profile is named for the process: the echo load has a client of its own.
  const nodeArgs = (name: string): string[] => [
    '--disable-warning=ExperimentalWarning',
    ...(opts.prof === undefined
      ? []
      : ['--cpu-prof', `--cpu-prof-dir=${opts.prof}`, `--cpu-prof-name=${name}.cpuprofile`]),
    SELF,
  ]
  const spawn = (role: string, args: string[], name = role): ResultPromise =>
    execa(process.execPath, [...nodeArgs(name), role, ...args], {
      env,
      reject: false,
      buffer: false,
      stderr: 'inherit',
    })
  const agentChild = spawn('agent', [])
  const [peer, addr] = (await firstLine(agentChild)).split(' ')
  const clientChild = spawn('client', [`${addr}/p2p/${peer}`, String(traffic.source)])
  const port = Number(/:(\d+)$/.exec(await firstLine(clientChild))?.[1])
  const echoClient = spawn('client', [`${addr}/p2p/${peer}`, String(traffic.echo)], 'echo-client')
  const echoPort = Number(/:(\d+)$/.exec(await firstLine(echoClient))?.[1])
  try {
    await throughput(port, 8 * MiB)
    // CPU per byte moved: on a shared machine wall-clock throughput follows
    // whatever else runs, the CPU our two processes spend per byte does not.
    const pids = [agentChild.pid!, clientChild.pid!]
    const perMiB: number[] = []
    const mbps = await repeat(Number(opts.runs), async () => {
      const cpuBefore = pids.map(cpuSeconds)
      const callsBefore = pids.map(syscallCount)
      const rate = await throughput(port, Number(opts.mib) * MiB)
      const ms = pids.map((pid, i) => ((cpuSeconds(pid) - cpuBefore[i]!) * 1000) / mib)
      const calls = pids.map((pid, i) => (syscallCount(pid) - callsBefore[i]!) / mib)
      perMiB.push(ms[0]! + ms[1]!)
      if (opts.verbose === true) {
        console.log(
          `  run: ${rate.toFixed(0)} MB/s; CPU ms per MiB agent ${ms[0]!.toFixed(2)}, ` +
            `client ${ms[1]!.toFixed(2)}; read+write calls per MiB agent ` +
            `${calls[0]!.toFixed(0)}, client ${calls[1]!.toFixed(0)}`,
        )
      }
      return rate
    })
    console.log(`one stream: ${formatSummary(mbps, 'MB/s')}`)
    console.log(`CPU, agent + client: ${formatSummary(summarize(perMiB), 'ms per MiB')}`)
    const raw = await repeat(Number(opts.runs), () =>
      throughput(traffic.source, Number(opts.mib) * MiB),
    )
    console.log(`raw loopback: ${formatSummary(raw, 'MB/s')}`)
    const echo = await echoLoad(echoPort, 100, 100)
    console.log(
      `100 echo connections: ${echo.perSecond.toFixed(0)} round trips/s, ` +
        `p50 ${echo.p50.toFixed(2)} ms, p99 ${echo.p99.toFixed(2)} ms`,
    )
  } finally {
    for (const child of [clientChild, echoClient, agentChild]) child.kill('SIGINT')
    await Promise.all([clientChild, echoClient, agentChild])
    traffic.child.kill()
  }
}

const role = process.argv[2]
if (role === 'agent') await agent()
else if (role === 'client') await client(process.argv[3] ?? '', Number(process.argv[4]))
else await main()
