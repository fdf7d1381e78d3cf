/**
 * The mesh on real network topologies: Linux network namespaces joined by
 * veth pairs and bridges, NAT routers with nftables, and the real server,
 * CLI, terraform and agent processes placed in them.
 *
 *                      public 10.231.1.0/24
 *   coord ─────────────┬──────────────┬──────────────┬────────── stranger
 *   (server, relay,    │              │              │
 *    its STUN)      home-nat       cafe-nat      office-nat (drops UDP)
 *                      │              │              │
 *               home 10.231.2/24   cafe 10.231.3/24  office 10.231.4/24
 *               agent, laptop      remote            blocked
 *
 * The NATs masquerade and let nothing in that the LAN did not start; other
 * private segments are unroutable (packets vanish, as on the internet).
 * The server runs its STUN responder by default and hands its URL to the
 * agent and the clients: nobody here sets CODER_MESH_ICE_SERVERS, except the
 * relay-only user, who turns WebRTC off with it.
 * Needs root; skipped otherwise, with the reason in the suite's name.
 */
import type { ResultPromise } from 'execa'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { removeTree, type CliResult } from '../harness.ts'
import type { PingReport } from '../../client/ping.ts'
import {
  NODE,
  startServerIn,
  userIn,
  writeNetnsTemplate,
  type NetnsServer,
  type NetnsUser,
  type PeerEvent,
} from './mesh.ts'
import { netnsSupport, Topology, type Host, type NatRouter } from './topology.ts'

const support = await netnsSupport()
const skipReason = support.ok ? '' : support.reason
if (!support.ok) console.warn(`[netns] skipping the network topology tests: ${skipReason}`)

const HTTP_PORT = 7080
const WEB_PORT = 8080

function find(events: PeerEvent[], name: string): PeerEvent[] {
  return events.filter((e) => e.event === name)
}

/** The `path` fields of the CLI's debug log lines saying which path it connected on. */
function loggedPaths(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string; path?: string })
    .filter((l) => l.msg === 'connected to the agent')
    .map((l) => l.path ?? '')
}

function logged(stderr: string, msg: string): number {
  return stderr.split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length
}

describe.skipIf(!support.ok)(
  `mesh on real network topologies${support.ok ? '' : ` (skipped: ${skipReason})`}`,
  () => {
    let topology: Topology
    let base: string
    let coord: Host
    let agentHost: Host
    let remoteHost: Host
    let homeNat: NatRouter
    let cafeNat: NatRouter
    let server: NetnsServer
    /** On the agent's LAN. */
    let laptop: NetnsUser
    /** Behind another NAT; WebRTC off (CODER_MESH_ICE_SERVERS=none), so relay only. */
    let remote: NetnsUser
    /** Behind another NAT, with the coordinator's STUN server: may hole-punch with WebRTC. */
    let remoteWebrtc: NetnsUser
    /** Behind a NAT that drops all UDP: WebRTC upgrades fail. */
    let blocked: NetnsUser
    let stranger: NetnsUser
    /** The CLI's output for `ssh` run right after `create`, on the agent's LAN. */
    let firstSsh: CliResult

    beforeAll(async () => {
      base = await mkdtemp(join(tmpdir(), 'coder-mesh-netns-'))
      topology = await Topology.create()
      const pub = await topology.segment('public')
      coord = await topology.host('coord', pub)
      homeNat = await topology.natRouter('home-nat', pub, 'home')
      cafeNat = await topology.natRouter('cafe-nat', pub, 'cafe')
      const officeNat = await topology.natRouter('office-nat', pub, 'office', { blockUdp: true })
      agentHost = await topology.host('agent', homeNat.lan)
      const laptopHost = await topology.host('laptop', homeNat.lan)
      remoteHost = await topology.host('remote', cafeNat.lan)
      const blockedHost = await topology.host('blocked', officeNat.lan)
      const strangerHost = await topology.host('stranger', pub)

      server = await startServerIn(topology, coord, HTTP_PORT, base)

      laptop = await userIn(topology, laptopHost, base)
      remote = await userIn(topology, remoteHost, base, { CODER_MESH_ICE_SERVERS: 'none' })
      remoteWebrtc = await userIn(topology, remoteHost, join(base, 'webrtc'))
      blocked = await userIn(topology, blockedHost, base)
      stranger = await userIn(topology, strangerHost, base)
      await laptop.login(server.url, true)
      for (const user of [remote, remoteWebrtc, blocked]) await user.login(server.url)

      const templateDir = join(base, 'template')
      await writeNetnsTemplate(templateDir)
      const push = await laptop.cli(['templates', 'push', 'netns', '-d', templateDir])
      expect(push.exitCode, push.stderr).toBe(0)
      const create = await laptop.cli([
        'create',
        'dev',
        '--template',
        'netns',
        '--parameter',
        `agent_netns=${agentHost.ns}`,
        '-y',
      ])
      expect(create.exitCode, create.stdout + create.stderr).toBe(0)
      // The agent runs in its own namespace, not the coordinator's.
      expect((await topology.pids(agentHost)).length).toBeGreaterThan(0)
      // At once, while the agent may still be registering for the first time.
      firstSsh = await laptop.cli(['ssh', 'dev', '--', 'true'], {
        env: { CODER_MESH_LOG_LEVEL: 'debug' },
      })
    }, 180_000)

    afterAll(async () => {
      // destroy() SIGKILLs everything in the namespaces: server, terraform, agent, STUN.
      await topology?.destroy()
      if (base !== undefined) await removeTree(base)
    })

    it('should go direct on the LAN right after create: the first registration has addresses', () => {
      expect(firstSsh.exitCode, firstSsh.stderr).toBe(0)
      expect(loggedPaths(firstSsh.stderr)).toEqual(['direct (tcp)'])
    })

    it('should connect directly between two hosts on one LAN', async () => {
      const r = await laptop.cli(['ssh', 'dev', '--', 'echo $((6*7))'], {
        env: { CODER_MESH_LOG_LEVEL: 'debug' },
      })
      expect(r.stdout.trim(), r.stderr).toBe('42')
      expect(r.exitCode, r.stderr).toBe(0)
      expect(loggedPaths(r.stderr)).toEqual(['direct (tcp)'])

      const probe = await laptop.peer(['probe', 'dev'])
      expect(probe.exitCode, probe.stderr).toBe(0)
      expect(find(probe.events, 'connected')).toEqual([
        { event: 'connected', path: 'direct (tcp)' },
      ])
      expect(find(probe.events, 'banner')[0]?.banner).toMatch(/^SSH-2\.0-/)

      const ping = await laptop.cli(['ping', 'dev', '-n', '3', '-i', '0.2'])
      expect(ping.exitCode, ping.stderr).toBe(0)
      expect(ping.stdout).toMatch(/3 sent, 3 received/)
      expect(ping.stdout).toMatch(/direct \(tcp\)/)
      expect(ping.stdout).not.toMatch(/relay/)
    })

    it('should reach an agent behind a NAT only through the relay', async () => {
      const r = await remote.cli(['ssh', 'dev', '--', 'echo $((6*7))'], {
        env: { CODER_MESH_LOG_LEVEL: 'debug' },
      })
      expect(r.stdout.trim(), r.stderr).toBe('42')
      expect(r.exitCode, r.stderr).toBe(0)
      const relayed = new RegExp(
        `^relayed via /ip4/${coord.ip.replaceAll('.', '\\.')}/tcp/\\d+/p2p/`,
      )
      expect(loggedPaths(r.stderr)).toEqual([expect.stringMatching(relayed)])

      const probe = await remote.peer(['probe', 'dev'])
      expect(probe.exitCode, probe.stderr).toBe(0)
      expect(find(probe.events, 'connected')[0]?.path).toMatch(relayed)
      expect(find(probe.events, 'banner')[0]?.banner).toMatch(/^SSH-2\.0-/)
      // The agent's own (private) address was on offer, and unreachable from here.
      const ticket = find(probe.events, 'ticket')[0]
      expect(ticket?.relays).toEqual(expect.arrayContaining([expect.stringContaining(coord.ip)]))

      const ping = await remote.cli(['ping', 'dev', '-n', '3', '-i', '0.2'])
      expect(ping.exitCode, ping.stderr).toBe(0)
      expect(ping.stdout).toMatch(/3 sent, 3 received/)
      expect(ping.stdout).toMatch(/relayed via/)
      expect(ping.stdout).not.toMatch(/direct/)

      // A port forward through the relay, to a web server on the workspace's loopback.
      const web = topology.spawn(agentHost, NODE, [
        '-e',
        `require('node:http').createServer((q, s) => s.end('hello from the workspace'))` +
          `.listen(${WEB_PORT}, '127.0.0.1', () => console.log('ready'))`,
      ])
      const forward = remote.spawnCli(['port-forward', 'dev', '--tcp', `0:${WEB_PORT}`])
      try {
        await lineMatching(web, /ready/)
        const line = await lineMatching(forward, /^Forwarding 127\.0\.0\.1:(\d+) -> dev:/)
        const port = /:(\d+) ->/.exec(line)![1]
        const got = await topology.exec(
          remoteHost,
          NODE,
          ['-e', `fetch('http://127.0.0.1:${port}/').then((r) => r.text()).then(console.log)`],
          { reject: false, timeout: 30_000 },
        )
        expect(String(got.stdout).trim(), String(got.stderr)).toBe('hello from the workspace')
      } finally {
        forward.kill('SIGINT')
        web.kill('SIGKILL')
        await Promise.allSettled([forward, web])
      }
    })

    it('should give a peer with no grant neither a reservation nor a circuit on the relay', async () => {
      // The relay's address and the agent's peer id, as an authorized user sees them.
      const probe = await remote.peer(['probe', 'dev'])
      const ticket = find(probe.events, 'ticket')[0]
      const relay = (ticket?.relays as string[]).find((a) => a.includes(`/ip4/${coord.ip}/`))
      expect(relay).toBeDefined()

      const r = await stranger.peer(['stranger', relay!, String(ticket?.agent)])
      expect(r.exitCode, r.stderr).toBe(0)
      // It may connect to the relay (gating goes by identity, not address) ...
      expect(find(r.events, 'relay-connection')[0]).toMatchObject({ ok: true })
      // ... but gets no slot and no circuit.
      expect(find(r.events, 'reserve')[0]).toMatchObject({ ok: false })
      expect(find(r.events, 'circuit')[0]).toMatchObject({ ok: false })
    })

    it('should show the hole-punched upgrade in one coder-mesh ping run', async () => {
      const udpBefore = [await topology.udpForwarded(homeNat), await topology.udpForwarded(cafeNat)]
      const ping = await remoteWebrtc.cli(['ping', 'dev', '-n', '30', '-i', '0.5', '-o', 'json'])
      expect(ping.exitCode, ping.stderr).toBe(0)
      const report = JSON.parse(ping.stdout) as PingReport
      const paths = report.pings.map((p) => p.path)
      // Starts relayed (the agent's own address is on a private LAN behind a NAT) ...
      expect(paths[0], paths.join(', ')).toMatch(/^relayed via /)
      // ... and moves to WebRTC once the dialer has punched through, staying there.
      const upgradedAt = paths.indexOf('direct (webrtc)')
      expect(upgradedAt, paths.join(', ')).toBeGreaterThan(0)
      expect(paths.slice(upgradedAt).every((p) => p === 'direct (webrtc)')).toBe(true)
      expect(report.path).toBe('direct (webrtc)')
      expect(report.received).toBe(report.sent)
      const avg = (ps: typeof report.pings): number =>
        ps.reduce((a, p) => a + (p.rtt ?? 0), 0) / Math.max(1, ps.length)
      console.log(
        `[netns] ping: ${upgradedAt} relayed (avg ${avg(report.pings.slice(0, upgradedAt)).toFixed(2)} ms),` +
          ` then direct (webrtc) (avg ${avg(report.pings.slice(upgradedAt)).toFixed(2)} ms)`,
      )
      // The data went peer to peer over UDP, through both NATs.
      expect(await topology.udpForwarded(homeNat)).toBeGreaterThan(udpBefore[0]!)
      expect(await topology.udpForwarded(cafeNat)).toBeGreaterThan(udpBefore[1]!)
    }, 60_000)

    it('should upgrade a relayed connection to direct WebRTC through two NATs', async () => {
      const udpBefore = [await topology.udpForwarded(homeNat), await topology.udpForwarded(cafeNat)]
      const probe = await remoteWebrtc.peer(['probe', 'dev', '--upgrade', '30000'])
      expect(probe.exitCode, probe.stderr).toBe(0)
      expect(find(probe.events, 'connected')[0]?.path).toMatch(/^relayed via /)
      expect(find(probe.events, 'best')[0]).toEqual({
        event: 'best',
        path: 'direct (webrtc)',
        relayedStillOpen: true,
      })
      const banners = find(probe.events, 'banner')
      expect(banners.map((b) => b.path)).toEqual([
        expect.stringMatching(/^relayed via /),
        'direct (webrtc)',
        expect.stringMatching(/^relayed via /),
      ])
      for (const b of banners) expect(b.banner).toMatch(/^SSH-2\.0-/)
      // The data went peer to peer over UDP, through both NATs.
      expect(await topology.udpForwarded(homeNat)).toBeGreaterThan(udpBefore[0]!)
      expect(await topology.udpForwarded(cafeNat)).toBeGreaterThan(udpBefore[1]!)

      // The CLI with WebRTC on works the same (its session stays where it started).
      const r = await remoteWebrtc.cli(['ssh', 'dev', '--', 'sleep 2; echo upgraded-ok'])
      expect(r.stdout.trim()).toBe('upgraded-ok')
      expect(r.exitCode, r.stderr).toBe(0)
    }, 90_000)

    it('should keep a relayed session going while WebRTC upgrades fail (B12)', async () => {
      const r = await blocked.cli(
        ['ssh', 'dev', '--', 'for i in $(seq 30); do echo $i; sleep 0.5; done'],
        { env: { CODER_MESH_LOG_LEVEL: 'debug' } },
      )
      expect(r.exitCode, r.stderr).toBe(0)
      expect(r.stdout.trim().split('\n')).toEqual(
        Array.from({ length: 30 }, (_, i) => String(i + 1)),
      )
      expect(loggedPaths(r.stderr)).toEqual([expect.stringMatching(/^relayed via /)])
      // An attempt ran and failed (given up after 10 s) while the session went on.
      expect(logged(r.stderr, 'upgrading the relayed connection')).toBeGreaterThan(0)
      expect(
        logged(r.stderr, 'upgrade attempt failed; the relayed connection stays'),
      ).toBeGreaterThan(0)
      expect(logged(r.stderr, 'upgraded to a direct connection')).toBe(0)
    }, 90_000)

    it('should keep an SSH session through a coordinator SIGKILL and come back on the relay', async () => {
      const session = laptop.spawnCli([
        'ssh',
        'dev',
        '--',
        'for i in $(seq 40); do echo $i; sleep 0.5; done',
      ])
      let out = ''
      session.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
      })
      await waitUntil('the session to start', async () => out.includes('3\n'), 30_000)

      await server.restart(true)
      const restarted = Date.now()

      // Meanwhile, relay-only from the cafe: back once the agent has
      // reserved on the new relay (its port changed with the restart).
      let last: PeerEvent[] = []
      const back = waitUntil(
        'a relayed connection after the restart',
        async () => {
          const probe = await remote.peer(['probe', 'dev', '--timeout', '5000'])
          last = probe.events
          return probe.exitCode === 0
        },
        45_000,
      ).then(
        () => Date.now() - restarted,
        (err: Error) => {
          throw new Error(`${err.message}; last probe: ${JSON.stringify(last)}`)
        },
      )

      const done = await session
      expect(done.exitCode, String(done.stderr)).toBe(0)
      expect(out.trim().split('\n').at(-1)).toBe('40')

      const elapsed = await back
      console.log(`[netns] relay-only client reconnected ${elapsed} ms after the restart`)
      expect(find(last, 'connected')[0]?.path).toMatch(/^relayed via /)
      const r = await remote.cli(['ssh', 'dev', '--', 'echo back'])
      expect(r.stdout.trim()).toBe('back')
    }, 150_000)
  },
)

/** Resolves with the first stdout line of `child` that matches `pattern`. */
function lineMatching(child: ResultPromise, pattern: RegExp, timeout = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = ''
    const timer = setTimeout(
      () => reject(new Error(`no line matching ${pattern}: ${seen}`)),
      timeout,
    )
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
      const line = seen.split('\n').find((l) => pattern.test(l))
      if (line !== undefined) {
        clearTimeout(timer)
        resolve(line)
      }
    })
    void Promise.resolve(child).then(() => {
      clearTimeout(timer)
      reject(new Error(`exited before a line matching ${pattern}: ${seen}`))
    })
  })
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeout: number) {
  const deadline = Date.now() + timeout
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 500))
  }
  throw new Error(`timed out waiting for ${what}`)
}
