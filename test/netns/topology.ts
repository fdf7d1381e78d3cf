/**
 * Real network topologies for tests, built from Linux network namespaces
 * (root only): hosts, L2 segments (bridges), NAT routers, and processes run
 * inside a host's namespace.
 *
 * Layout of one topology with id T (a few random hex digits):
 *
 *   cmT-hub            one namespace holding a bridge per segment; no addresses
 *   cmT-<host>         one namespace per host (and per NAT router), each with
 *                      a veth pair into its segment's bridge in cmT-hub
 *
 * Every address lies in TEST_PREFIX (10.231.0.0/16; segment N is
 * 10.231.N.0/24). Safety:
 * - no interface of a topology is ever put in the root namespace (every
 *   link is created inside a test namespace), so no packet of a test can
 *   reach the machine's own network, let alone leave it;
 * - while a topology exists, the root namespace also routes the whole test
 *   prefix to `unreachable` (one route per topology, told apart by metric),
 *   in case some process there tries one of the test addresses;
 * - destroy() kills every process left in the topology's namespaces, deletes
 *   them and that route; it runs even after a failure, and a process exit
 *   hook does the same when a test run is torn down abruptly.
 */
import { execa, execaSync, type Options, type ResultPromise } from 'execa'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'

/** Every address a topology uses lies in this prefix. */
export const TEST_PREFIX = '10.231.0.0/16'
const PREFIX_BASE = '10.231'

export type Support = { ok: true } | { ok: false; reason: string }

let support: Promise<Support> | undefined

/**
 * Whether this process may build topologies: root, the `ip` and `nft`
 * commands, and `ip netns add` working. Tests skip with `reason` otherwise.
 */
export function netnsSupport(): Promise<Support> {
  support ??= (async (): Promise<Support> => {
    if (process.platform !== 'linux') return { ok: false, reason: 'network namespaces need Linux' }
    if (process.getuid?.() !== 0) {
      return { ok: false, reason: 'network namespaces need root (run as root, as CI does)' }
    }
    for (const tool of ['ip', 'nft']) {
      const found = await execa('sh', ['-c', `command -v ${tool}`], { reject: false })
      if (found.exitCode !== 0) {
        return {
          ok: false,
          reason: `the '${tool}' command is missing (apt-get install iproute2 nftables)`,
        }
      }
    }
    const probe = `cmprobe-${randomBytes(3).toString('hex')}`
    const added = await execa('ip', ['netns', 'add', probe], { reject: false })
    if (added.exitCode !== 0) {
      return { ok: false, reason: `'ip netns add' failed: ${added.stderr.trim()}` }
    }
    await execa('ip', ['netns', 'del', probe], { reject: false })
    return { ok: true }
  })()
  return support
}

export interface Segment {
  name: string
  /** e.g. 10.231.3.0/24 */
  cidr: string
  /** The segment's bridge in the hub namespace. */
  bridge: string
  /** The default gateway of hosts on the segment (a NAT router's LAN address), if any. */
  gateway?: string
}

export interface Host {
  name: string
  /** The namespace, for `ip netns exec`. */
  ns: string
  /** The host's address on its (first) segment. */
  ip: string
}

export interface NatRouter extends Host {
  /** The router's address on the upstream segment: where the NAT's traffic comes from. */
  wanIp: string
  lan: Segment
}

export interface NatOptions {
  /**
   * Let connections in from the upstream side to the LAN (like a router
   * with port forwards everywhere). Default false: only replies to
   * connections the LAN opened get in.
   */
  allowInbound?: boolean
  /** Drop all UDP crossing the router (B12: UDP blocked). */
  blockUdp?: boolean
}

const live = new Set<Topology>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last resort when a run is torn down without afterAll: synchronous cleanup.
  process.once('exit', () => {
    for (const topology of live) topology.destroySync()
  })
}

export class Topology {
  readonly id: string
  /** The root namespace route that keeps test addresses from leaving. */
  private readonly metric: number
  private readonly hub: string
  private readonly namespaces: string[] = []
  private readonly processes = new Set<ResultPromise>()
  private segments = 0
  private readonly nextHost = new Map<string, number>()
  private vethCount = 0
  private destroyed = false

  private constructor(id: string, metric: number) {
    this.id = id
    this.metric = metric
    this.hub = `cm${id}-hub`
  }

  /** Builds an empty topology (just the hub). Call destroy() in afterAll. */
  static async create(): Promise<Topology> {
    const s = await netnsSupport()
    if (!s.ok) throw new Error(`network namespaces unavailable: ${s.reason}`)
    installExitHook()
    for (let tries = 0; ; tries++) {
      const id = randomBytes(3).toString('hex')
      // Metrics tell apart the routes of topologies that exist at once.
      const metric = 4000 + (parseInt(id, 16) % 60000)
      const added = await execa(
        'ip',
        ['route', 'add', 'unreachable', TEST_PREFIX, 'metric', String(metric)],
        { reject: false },
      )
      if (added.exitCode !== 0) {
        // Another topology's route has this metric: never touch it, pick another.
        if (/File exists/.test(added.stderr) && tries < 5) continue
        throw new Error(`could not fence off ${TEST_PREFIX}: ${added.stderr.trim()}`)
      }
      const topology = new Topology(id, metric)
      live.add(topology)
      try {
        await topology.addNamespace(topology.hub)
      } catch (err) {
        await topology.destroy()
        throw err
      }
      return topology
    }
  }

  /** A new L2 segment, 10.231.N.0/24. */
  async segment(name: string): Promise<Segment> {
    const n = ++this.segments
    if (n > 250) throw new Error('too many segments')
    const bridge = `br${n}`
    await this.ip(this.hub, 'link', 'add', bridge, 'type', 'bridge')
    await this.ip(this.hub, 'link', 'set', bridge, 'up')
    this.nextHost.set(`${PREFIX_BASE}.${n}.0/24`, 1)
    return { name, cidr: `${PREFIX_BASE}.${n}.0/24`, bridge }
  }

  /** A host on `segment`; its default route goes through the segment's gateway, if any. */
  async host(name: string, segment: Segment): Promise<Host> {
    const ns = this.nsName(name)
    await this.addNamespace(ns)
    const ip = await this.attach(ns, segment)
    if (segment.gateway !== undefined) {
      await this.ip(ns, 'route', 'add', 'default', 'via', segment.gateway)
    }
    return { name, ns, ip }
  }

  /**
   * A NAT router between `upstream` and a new LAN segment named `lanName`
   * (the router is the LAN's gateway). Outbound connections are masqueraded
   * to the router's upstream address; nothing gets in unless it answers a
   * connection from the LAN (or `allowInbound`). Linux NAT keeps a flow's
   * source port when it can, so mapping is endpoint-independent; filtering
   * is per connection. Other private segments are unroutable from here:
   * packets to them are dropped without an answer, as on the internet.
   */
  async natRouter(
    name: string,
    upstream: Segment,
    lanName: string,
    options: NatOptions = {},
  ): Promise<NatRouter> {
    const ns = this.nsName(name)
    await this.addNamespace(ns)
    const wanIp = await this.attach(ns, upstream) // eth0
    const lan = await this.segment(lanName)
    const lanIp = await this.attach(ns, lan) // eth1
    lan.gateway = lanIp
    await this.ip(ns, 'route', 'add', 'blackhole', TEST_PREFIX)
    await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'])
    const udp = options.blockUdp === true ? 'meta l4proto udp drop' : ''
    const inbound = options.allowInbound === true ? 'iifname "eth0" oifname "eth1" accept' : ''
    // The input chain drops unsolicited packets to the router itself, as home
    // routers do. Without it, a hole-punching packet that arrives before our
    // side sent its own gets an ICMP port-unreachable, and its conntrack
    // entry takes the port that our side's mapping needs: masquerade then
    // picks another port and the punched hole leads nowhere.
    const rules = `
      table ip cmnat {
        counter udp_forwarded {}
        chain forward {
          type filter hook forward priority filter; policy drop;
          meta l4proto udp counter name "udp_forwarded"
          ${udp}
          ct state established,related accept
          iifname "eth1" oifname "eth0" accept
          ${inbound}
        }
        chain input {
          type filter hook input priority filter; policy accept;
          iifname "eth0" ct state established,related accept
          iifname "eth0" drop
        }
        chain postrouting {
          type nat hook postrouting priority srcnat; policy accept;
          oifname "eth0" masquerade
        }
      }
    `
    await run('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: rules })
    return { name, ns, ip: lanIp, wanIp, lan }
  }

  /** Runs `cmd args` inside `host`'s namespace and waits for it. */
  exec(host: Host, cmd: string, args: string[], options: Options = {}): ResultPromise {
    return execa('ip', ['netns', 'exec', host.ns, cmd, ...args], options)
  }

  /** Starts a long-running process inside `host`; destroy() kills it if still running. */
  spawn(host: Host, cmd: string, args: string[], options: Options = {}): ResultPromise {
    const child = execa('ip', ['netns', 'exec', host.ns, cmd, ...args], {
      reject: false,
      ...options,
    })
    this.processes.add(child)
    void Promise.resolve(child).finally(() => this.processes.delete(child))
    return child
  }

  /** UDP packets that reached `router`'s forwarding (either way, dropped or not). */
  async udpForwarded(router: NatRouter): Promise<number> {
    const r = await execa('ip', [
      'netns',
      'exec',
      router.ns,
      'nft',
      'list',
      'counter',
      'ip',
      'cmnat',
      'udp_forwarded',
    ])
    const match = /packets (\d+)/.exec(r.stdout)
    if (match?.[1] === undefined) throw new Error(`no counter in: ${r.stdout}`)
    return Number(match[1])
  }

  /** The pids of every process inside `host`'s namespace. */
  async pids(host: Host): Promise<number[]> {
    const r = await execa('ip', ['netns', 'pids', host.ns], { reject: false })
    return r.stdout
      .split('\n')
      .filter((l) => /^\d+$/.test(l.trim()))
      .map(Number)
  }

  /** Kills every process and deletes every namespace and the root route. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    for (const child of this.processes) child.kill('SIGKILL')
    for (const ns of [...this.namespaces].reverse()) {
      const r = await execa('ip', ['netns', 'pids', ns], { reject: false })
      for (const pid of r.stdout.split('\n').filter((l) => /^\d+$/.test(l.trim()))) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {
          // already gone
        }
      }
    }
    await Promise.allSettled([...this.processes])
    for (const ns of [...this.namespaces].reverse()) {
      await execa('ip', ['netns', 'del', ns], { reject: false })
    }
    await execa('ip', ['route', 'del', 'unreachable', TEST_PREFIX, 'metric', String(this.metric)], {
      reject: false,
    })
    live.delete(this)
  }

  /** destroy() for the process exit hook: no awaiting possible there. */
  destroySync(): void {
    if (this.destroyed) return
    this.destroyed = true
    for (const ns of [...this.namespaces].reverse()) {
      if (!existsSync(`/run/netns/${ns}`)) continue
      execaSync('sh', ['-c', `ip netns pids ${ns} | xargs -r kill -9; ip netns del ${ns}`], {
        reject: false,
      })
    }
    execaSync('ip', ['route', 'del', 'unreachable', TEST_PREFIX, 'metric', String(this.metric)], {
      reject: false,
    })
  }

  private nsName(name: string): string {
    if (!/^[a-z0-9-]{1,20}$/.test(name)) throw new Error(`bad host name ${JSON.stringify(name)}`)
    return `cm${this.id}-${name}`
  }

  private async addNamespace(ns: string): Promise<void> {
    await run('ip', ['netns', 'add', ns])
    this.namespaces.push(ns)
    await this.ip(ns, 'link', 'set', 'lo', 'up')
  }

  /** Connects `ns` to `segment` with a new veth (ethK inside ns); returns its address. */
  private async attach(ns: string, segment: Segment): Promise<string> {
    const hubSide = `p${++this.vethCount}`
    const links = await execa('ip', ['-n', ns, '-o', 'link', 'show'])
    const index = (links.stdout.match(/: eth\d+[@:]/g) ?? []).length
    const inside = `eth${index}`
    await this.ip(
      this.hub,
      'link',
      'add',
      hubSide,
      'type',
      'veth',
      'peer',
      'name',
      inside,
      'netns',
      ns,
    )
    await this.ip(this.hub, 'link', 'set', hubSide, 'master', segment.bridge, 'up')
    const n = this.nextHost.get(segment.cidr) ?? 1
    this.nextHost.set(segment.cidr, n + 1)
    const ip = segment.cidr.replace(/\.0\/24$/, `.${n}`)
    await this.ip(ns, 'addr', 'add', `${ip}/24`, 'dev', inside)
    await this.ip(ns, 'link', 'set', inside, 'up')
    return ip
  }

  private async ip(ns: string, ...args: string[]): Promise<void> {
    await run('ip', ['-n', ns, ...args])
  }
}

async function run(cmd: string, args: string[], options: Options = {}): Promise<void> {
  const r = await execa(cmd, args, { reject: false, ...options })
  if (r.exitCode !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.exitCode}): ${String(r.stderr).trim()}`)
  }
}
