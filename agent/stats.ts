/**
 * The agent's stats: the workspace machine's CPU, memory and disk, and the
 * agent's own traffic: open SSH connections, client connections by path
 * (direct or relayed) and bytes each way on the mesh services' streams.
 *
 * Traffic is counted by a TrafficMeter wrapped around the node's stream
 * handlers (`meteredNode`), so every mesh protocol is counted without each
 * service doing it. The connections it saw a stream on are the client
 * connections: the agent's own connections to its relays carry none.
 */
import type { Connection, Stream } from '@libp2p/interface'
import { readFile, statfs } from 'node:fs/promises'
import { cpus, freemem, totalmem } from 'node:os'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import type { MeshNode } from '../netstack/node.ts'
import type { AgentStats } from '../sdk/api-types.ts'

type StreamHandler = (stream: Stream, connection: Connection) => void | Promise<void>

/** Counts bytes and open SSH streams on the mesh services' streams. */
export class TrafficMeter {
  rxBytes = 0
  txBytes = 0
  sshSessions = 0
  /** Ids of the connections a mesh stream came in on: client connections. */
  private readonly clientConnections = new Set<string>()

  /** `handler`, counting its streams' traffic. */
  wrap(protocol: string, handler: StreamHandler): StreamHandler {
    return (stream, connection) => {
      this.clientConnections.add(connection.id)
      const send = stream.send.bind(stream)
      stream.send = (data) => {
        this.txBytes += data.byteLength
        return send(data)
      }
      const ssh = protocol === SSH_PROTOCOL
      if (ssh) this.sshSessions++
      stream.addEventListener('close', () => {
        if (ssh) this.sshSessions--
      })
      // The handler first: it attaches its own 'message' listener at once,
      // and buffered data is dispatched in a microtask, so ours sees it too.
      const result = handler(stream, connection)
      stream.addEventListener('message', (evt) => {
        this.rxBytes += evt.data.byteLength
      })
      return result
    }
  }

  /** Open client connections by path; forgets connections that closed. */
  connections(node: MeshNode): { direct: number; relayed: number } {
    const open = new Set<string>()
    let direct = 0
    let relayed = 0
    for (const connection of node.getConnections()) {
      if (!this.clientConnections.has(connection.id)) continue
      open.add(connection.id)
      const circuit =
        connection.remoteAddr.toString().includes('/p2p-circuit') || connection.limits !== undefined
      if (circuit) relayed++
      else direct++
    }
    for (const id of this.clientConnections) if (!open.has(id)) this.clientConnections.delete(id)
    return { direct, relayed }
  }
}

/**
 * `node` with its stream handlers counted by `meter`: pass it where mesh
 * protocols are registered. Everything else goes to the node itself.
 */
export function meteredNode(node: MeshNode, meter: TrafficMeter): MeshNode {
  return new Proxy(node, {
    get(target, property) {
      if (property === 'handle') {
        const handle: MeshNode['handle'] = (protocol, handler, options) => {
          const name = Array.isArray(protocol) ? String(protocol[0]) : String(protocol)
          return target.handle(protocol, meter.wrap(name, handler), options)
        }
        return handle
      }
      const value: unknown = Reflect.get(target, property, target)
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value
    },
  })
}

interface CpuTimes {
  idle: number
  total: number
}

function cpuTimes(): CpuTimes {
  let idle = 0
  let total = 0
  for (const cpu of cpus()) {
    const t = cpu.times
    idle += t.idle
    total += t.user + t.nice + t.sys + t.idle + t.irq
  }
  return { idle, total }
}

/** Used and total memory: MemTotal − MemAvailable from /proc/meminfo, else Node's figures. */
async function memory(): Promise<{ used: number; total: number }> {
  try {
    const text = await readFile('/proc/meminfo', 'utf8')
    const kib = (name: string): number | undefined => {
      const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)
      return m === null ? undefined : Number(m[1]) * 1024
    }
    const total = kib('MemTotal')
    const available = kib('MemAvailable')
    if (total !== undefined && available !== undefined) {
      return { used: Math.max(0, total - available), total }
    }
  } catch {
    // No /proc: Node's figures count caches as used.
  }
  return { used: totalmem() - freemem(), total: totalmem() }
}

async function disk(path: string): Promise<{ used: number; total: number }> {
  try {
    const s = await statfs(path)
    return { used: (s.blocks - s.bfree) * s.bsize, total: s.blocks * s.bsize }
  } catch {
    return { used: 0, total: 0 }
  }
}

export interface StatsCollectorInit {
  node: MeshNode
  meter: TrafficMeter
  /** The workspace's home folder: its filesystem is the disk reported. */
  home: string
}

/**
 * Measures on each call; CPU use is over the time since the previous call.
 *
 * Shortcoming: CPU and memory are the machine's as /proc shows them, not a
 * container's cgroup limits, so an agent in a container reports its host's
 * totals. Reading cgroup v2's cpu.stat and memory.current/memory.max when
 * present would fix it.
 */
export function createStatsCollector(init: StatsCollectorInit): () => Promise<AgentStats> {
  let previous = cpuTimes()
  return async () => {
    const current = cpuTimes()
    const total = current.total - previous.total
    const idle = current.idle - previous.idle
    previous = current
    const cpuPercent = total > 0 ? Math.min(100, Math.max(0, (100 * (total - idle)) / total)) : 0
    const [mem, fs] = await Promise.all([memory(), disk(init.home)])
    return {
      time: new Date().toISOString(),
      cpuPercent: Math.round(cpuPercent * 10) / 10,
      cpuCores: cpus().length,
      memoryUsedBytes: mem.used,
      memoryTotalBytes: mem.total,
      diskUsedBytes: fs.used,
      diskTotalBytes: fs.total,
      sshSessions: Math.max(0, init.meter.sshSessions),
      connections: init.meter.connections(init.node),
      rxBytes: init.meter.rxBytes,
      txBytes: init.meter.txBytes,
    }
  }
}
