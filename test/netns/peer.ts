/**
 * Small programs the topology tests run inside a namespace (with the
 * project's Node 22: `node test/netns/peer.ts COMMAND ...`). Each prints one
 * JSON object a line on stdout.
 *
 *   probe NAME [--upgrade MS] [--timeout MS]
 *                                 as the logged-in CLI user (CODER_MESH_CONFIG_DIR):
 *                                 get a ticket, dial the agent on every path,
 *                                 report the path and the SSH banner (WebRTC
 *                                 with the coordinator's STUN servers); with
 *                                 --upgrade, wait up to MS for a direct
 *                                 connection and do it again on that one
 *   stranger RELAY AGENT_PEER     a fresh libp2p identity with no grant: try to
 *                                 reserve a slot on RELAY and to open a circuit
 *                                 through it to AGENT_PEER
 */
import type { Connection } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { SSH_PROTOCOL } from '../../netstack/constants.ts'
import { bestConnection, describePath, dialAgent, openMeshStream } from '../../netstack/dial.ts'
import { newPeerKey } from '../../netstack/keys.ts'
import { createMeshNode, meshWebrtc, type MeshNode } from '../../netstack/node.ts'
import { ApiClient } from '../../sdk/api-client.ts'

function report(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

function message(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err)
}

async function sshBanner(connection: Connection, ticket: string): Promise<string> {
  const duplex = await openMeshStream(connection, SSH_PROTOCOL, ticket)
  try {
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no SSH banner within 10 s')), 10_000)
      duplex.once('data', (chunk: Buffer) => {
        clearTimeout(timer)
        resolve(chunk.toString().trim())
      })
      duplex.once('error', reject)
    })
  } finally {
    duplex.destroy()
  }
}

async function probe(
  name: string,
  upgradeMs: number | undefined,
  timeout: number | undefined,
): Promise<void> {
  const configDir = process.env.CODER_MESH_CONFIG_DIR
  if (configDir === undefined) throw new Error('CODER_MESH_CONFIG_DIR is not set')
  const session = JSON.parse(await readFile(join(configDir, 'session.json'), 'utf8')) as {
    url: string
    sessionToken: string
  }
  const api = new ApiClient({ url: session.url, token: session.sessionToken })
  const ice: { servers?: string[] } = {}
  const node = await createMeshNode({
    privateKey: await newPeerKey(),
    listen: [],
    webrtc: meshWebrtc(() => ice.servers),
  })
  try {
    const target = await api.connect(name, node.peerId.toString())
    ice.servers = target.iceServers
    report('ticket', {
      agent: target.agent.peerId,
      addrs: target.agent.addrs,
      relays: target.relays,
    })
    const connection = await dialAgent(
      node,
      {
        peerId: target.agent.peerId,
        addrs: target.agent.addrs,
        relays: target.relays,
      },
      { timeout },
    )
    report('connected', { path: describePath(connection) })
    report('banner', {
      path: describePath(connection),
      banner: await sshBanner(connection, target.ticket),
    })
    if (upgradeMs === undefined) return

    const deadline = Date.now() + upgradeMs
    let best = bestConnection(node, target.agent.peerId)
    while (
      Date.now() < deadline &&
      (best === undefined || describePath(best).startsWith('relayed'))
    ) {
      await new Promise((r) => setTimeout(r, 200))
      best = bestConnection(node, target.agent.peerId)
    }
    if (best === undefined) throw new Error('no connection to the agent is left')
    report('best', {
      path: describePath(best),
      relayedStillOpen: connection.status === 'open',
    })
    report('banner', { path: describePath(best), banner: await sshBanner(best, target.ticket) })
    // The stream on the relayed connection still works after the upgrade.
    report('banner', {
      path: describePath(connection),
      banner: await sshBanner(connection, target.ticket),
    })
  } finally {
    await node.stop()
  }
}

async function stranger(relay: string, agentPeer: string): Promise<void> {
  const node: MeshNode = await createMeshNode({
    privateKey: await newPeerKey(),
    listen: [],
    webrtc: false,
  })
  const tm = (
    node as unknown as {
      components: {
        transportManager: {
          listen(addrs: ReturnType<typeof multiaddr>[]): Promise<void>
          dial(ma: ReturnType<typeof multiaddr>, o: { signal: AbortSignal }): Promise<Connection>
        }
      }
    }
  ).components.transportManager
  try {
    // The relay itself is reachable: the connection is only refused its services.
    try {
      const conn = await node.dial(multiaddr(relay), { signal: AbortSignal.timeout(10_000) })
      report('relay-connection', { ok: true, remote: conn.remotePeer.toString() })
    } catch (err) {
      report('relay-connection', { ok: false, error: message(err) })
    }

    try {
      await tm.listen([multiaddr(`${relay}/p2p-circuit`)])
      const circuit = node
        .getMultiaddrs()
        .map((a) => a.toString())
        .filter((a) => a.includes('/p2p-circuit'))
      report('reserve', { ok: circuit.length > 0, addrs: circuit })
    } catch (err) {
      report('reserve', { ok: false, error: message(err) })
    }

    try {
      const conn = await tm.dial(multiaddr(`${relay}/p2p-circuit/p2p/${agentPeer}`), {
        signal: AbortSignal.timeout(10_000),
      })
      report('circuit', { ok: true, path: describePath(conn) })
    } catch (err) {
      report('circuit', { ok: false, error: message(err) })
    }
  } finally {
    await node.stop()
  }
}

async function main(): Promise<void> {
  const [command, ...args] = process.argv.slice(2)
  switch (command) {
    case 'probe': {
      const flag = (name: string): number | undefined => {
        const i = args.indexOf(name)
        return i >= 0 ? Number(args[i + 1]) : undefined
      }
      await probe(args[0]!, flag('--upgrade'), flag('--timeout'))
      break
    }
    case 'stranger':
      await stranger(args[0]!, args[1]!)
      break
    default:
      throw new Error(`unknown command ${String(command)}`)
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    report('error', { error: message(err) })
    process.exit(1)
  },
)
