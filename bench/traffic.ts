/**
 * What the bench sends through each path, and how it times it. A traffic
 * process (this file run with `serve`) listens on loopback with two
 * services; every path under test (raw loopback, `ssh -L`, a coder-mesh
 * forward) ends at them:
 *
 * - source: the client sends a u64 BE byte count, the source answers with
 *   that many bytes and a FIN;
 * - echo: every byte received is sent back.
 *
 * It is a process of its own, as a real service would be, so the bench's
 * own reading does not share a CPU queue with the writing.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { quantile } from './stats.ts'

export const MiB = 1024 * 1024

export interface TrafficServer {
  source: number
  echo: number
  child: ChildProcess
}

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as AddressInfo).port
}

/** Runs both services in this process and prints their ports on stdout. */
async function serve(): Promise<void> {
  const block = randomBytes(MiB)
  const source = createServer((socket) => {
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
  const echo = createServer((socket) => {
    socket.setNoDelay(true)
    socket.on('error', () => undefined)
    socket.pipe(socket)
  })
  process.stdout.write(`${await listen(source)} ${await listen(echo)}\n`)
}

export async function startTraffic(): Promise<TrafficServer> {
  const child = spawn(
    process.execPath,
    ['--disable-warning=ExperimentalWarning', fileURLToPath(import.meta.url), 'serve'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const [line] = (await once(child.stdout!, 'data')) as [Buffer]
  const [source, echo] = line.toString().trim().split(' ').map(Number)
  return { source: source!, echo: echo!, child }
}

function request(bytes: number): Buffer {
  const head = Buffer.alloc(8)
  head.writeBigUInt64BE(BigInt(bytes), 0)
  return head
}

async function connected(port: number): Promise<Socket> {
  const socket = connect({ port, host: '127.0.0.1', noDelay: true })
  await once(socket, 'connect')
  return socket
}

/** Reads `bytes` from a source behind `port`; resolves with the byte count read. */
async function pull(port: number, bytes: number): Promise<void> {
  const socket = await connected(port)
  socket.write(request(bytes))
  let got = 0
  socket.on('data', (chunk: Buffer) => {
    got += chunk.length
  })
  await once(socket, 'end')
  socket.destroy()
  if (got !== bytes) throw new Error(`read ${got} of ${bytes} bytes through port ${port}`)
}

/** One stream: reads `bytes` through `port`; resolves with MB/s (10^6 bytes a second). */
export async function throughput(port: number, bytes: number): Promise<number> {
  const start = performance.now()
  await pull(port, bytes)
  return bytes / 1e6 / ((performance.now() - start) / 1000)
}

/** `streams` connections at once, each reading `bytes`; resolves with their total MB/s. */
export async function parallelThroughput(
  port: number,
  streams: number,
  bytes: number,
): Promise<number> {
  const start = performance.now()
  await Promise.all(Array.from({ length: streams }, () => pull(port, bytes)))
  return (streams * bytes) / 1e6 / ((performance.now() - start) / 1000)
}

/** Time from connect() to the first byte of the answer, in ms. */
export async function firstByte(port: number): Promise<number> {
  const start = performance.now()
  const socket = connect({ port, host: '127.0.0.1', noDelay: true })
  socket.write(request(1))
  await once(socket, 'data')
  const ms = performance.now() - start
  socket.destroy()
  return ms
}

export interface EchoResult {
  /** Round trips a second over all connections. */
  perSecond: number
  p50: number
  p99: number
  /** p99 of each connection's first exchange, which opens the forwarded stream. */
  firstP99: number
}

/**
 * `connections` connections to an echo service behind `port`, opened at
 * once; each then sends `size`-byte requests one after another, waiting for
 * each answer, `rounds` times. Latency is per request, in ms; the first
 * exchange of each connection (which, through a forward, waits for the
 * stream to open) is reported apart and left out of the others.
 */
export async function echoLoad(
  port: number,
  connections: number,
  rounds: number,
  size = 64,
): Promise<EchoResult> {
  const sockets = await Promise.all(Array.from({ length: connections }, () => connected(port)))
  const message = randomBytes(size)
  const latencies: number[] = []
  const firsts: number[] = []
  let start = 0
  // Timing starts once every connection has had its first answer.
  let opened = 0
  let allOpen: () => void = () => undefined
  const ready = new Promise<void>((resolve) => {
    allOpen = () => {
      if (++opened === connections) {
        start = performance.now()
        resolve()
      }
    }
  })
  await Promise.all(
    sockets.map(async (socket) => {
      let pending: { need: number; resolve: () => void } | undefined
      socket.on('data', (chunk: Buffer) => {
        if (pending === undefined) return
        pending.need -= chunk.length
        if (pending.need <= 0) pending.resolve()
      })
      const exchange = async (): Promise<number> => {
        const t0 = performance.now()
        await new Promise<void>((resolve) => {
          pending = { need: size, resolve }
          socket.write(message)
        })
        return performance.now() - t0
      }
      firsts.push(await exchange())
      allOpen()
      await ready
      for (let i = 0; i < rounds; i++) latencies.push(await exchange())
      socket.destroy()
    }),
  )
  const seconds = (performance.now() - start) / 1000
  return {
    perSecond: latencies.length / seconds,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    firstP99: quantile(firsts, 0.99),
  }
}

/** Waits until something accepts connections on `port` (a forward starting up). */
export async function waitForPort(port: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const socket = await connected(port)
      socket.destroy()
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, 100))
    }
  }
}

if (process.argv[2] === 'serve' && process.argv[1] === fileURLToPath(import.meta.url)) {
  await serve()
}
