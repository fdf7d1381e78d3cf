/**
 * Suspending a user revokes their mesh tickets: a real coordinator (over
 * HTTP, heartbeat shortened to 1 s) and a real agent (agent/index.ts); the
 * agent learns the revoked client peer in its next heartbeat answer, closes
 * that client's connection and refuses its old ticket, while another user's
 * connection to the same agent stays up. Builds run the real terraform on
 * the probe template, which hands over the agent token the build received.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startAgent, type RunningAgent } from '../agent/index.ts'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import { dialAgent, openMeshStream } from '../netstack/dial.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import { ApiClient } from '../sdk/api-client.ts'
import type { ConnectResponse } from '../sdk/api-types.ts'
import { createLogger } from '../sdk/logger.ts'
import { startServer, type RunningServer } from './server.ts'
import { openProbe, PASSWORD, type Probe } from './testing.ts'

const silent = createLogger('mesh:test', 'silent')

/** Resolves with the first bytes the stream sends (the SSH banner), or rejects when it ends. */
function firstBytes(duplex: Duplex): Promise<string> {
  return new Promise((resolve, reject) => {
    duplex.once('data', (chunk: Buffer) => resolve(chunk.toString()))
    duplex.once('error', reject)
    duplex.once('close', () => reject(new Error('stream closed')))
    duplex.once('end', () => reject(new Error('stream ended')))
  })
}

async function eventually(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

describe('ticket revocation on suspension', () => {
  let probe: Probe
  const nodes: MeshNode[] = []
  let server: RunningServer
  let agent: RunningAgent
  let dataDir: string
  let agentDir: string
  let admin: ApiClient
  let bob: ApiClient
  let retired: unknown

  /** A fresh client node holding a ticket to bob's workspace, as `api`'s user. */
  async function connectAs(api: ApiClient, query = '') {
    const node = await createMeshNode({ privateKey: await newPeerKey(), listen: [] })
    nodes.push(node)
    const res = await fetch(`${server.url}/api/v1/workspaces/dev/connect${query}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${api.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ peerId: node.peerId.toString() }),
    })
    expect(res.status).toBe(200)
    const ticket = (await res.json()) as ConnectResponse
    const target = { ...ticket.agent, relays: ticket.relays }
    const connection = await dialAgent(node, target, { timeout: 15_000 })
    const duplex = await openMeshStream(connection, SSH_PROTOCOL, ticket.ticket)
    expect(await firstBytes(duplex)).toMatch(/^SSH-2\.0-/)
    return { node, connection, duplex, ticket }
  }

  beforeAll(async () => {
    probe = await openProbe()
    dataDir = await mkdtemp(join(tmpdir(), 'mesh-revoke-'))
    agentDir = await mkdtemp(join(tmpdir(), 'mesh-revoke-agent-'))
    server = await startServer({
      address: '127.0.0.1:0',
      dataDir,
      p2pListen: ['/ip4/127.0.0.1/tcp/0'],
      log: silent,
      heartbeatSeconds: 1,
    })
    admin = new ApiClient({ url: server.url })
    await admin.createFirstUser({ username: 'alice', email: 'a@example.com', password: PASSWORD })
    admin.token = (await admin.login('alice', PASSWORD)).sessionToken
    await admin.pushTemplate('local', probe.template)
    await admin.createUser({ username: 'bob', email: 'b@example.com', password: PASSWORD })
    bob = new ApiClient({ url: server.url })
    bob.token = (await bob.login('bob', PASSWORD)).sessionToken

    const { build } = await bob.createWorkspace({ name: 'dev', template: 'local' })
    for await (const event of bob.followBuildLogs(build.id)) {
      if (event.type === 'build') expect(event.build.status).toBe('succeeded')
    }
    const agentToken = await probe.agentToken('dev')
    agent = await startAgent({
      url: server.url,
      token: agentToken,
      dir: agentDir,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      log: silent,
      onRetired: (err) => {
        retired = err
      },
    })
    const deadline = Date.now() + 30_000
    while (((await bob.workspace('dev')).agent?.addrs.length ?? 0) === 0) {
      if (Date.now() > deadline) throw new Error('the agent did not register its addresses')
      await new Promise((r) => setTimeout(r, 100))
    }
  })

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
    await agent?.stop()
    await server?.close()
    await rm(dataDir, { recursive: true, force: true })
    await rm(agentDir, { recursive: true, force: true })
    await probe?.cleanup()
  })

  it("should close a suspended user's open mesh connection on the agent's next heartbeat", async () => {
    const bobs = await connectAs(bob)
    // The owner reaches bob's workspace too (workspace:connect-any): a control.
    const owners = await connectAs(admin, '?owner=bob')
    const bobClosed = new Promise<void>((resolve) => bobs.duplex.once('close', () => resolve()))

    await admin.suspendUser('bob')
    await bobClosed
    await eventually('the agent to drop bob', () => bobs.connection.status !== 'open')
    expect(owners.connection.status).toBe('open')
    expect(owners.duplex.destroyed).toBe(false)

    // The old ticket no longer opens a stream, even over a fresh connection.
    const again = await dialAgent(
      bobs.node,
      { ...bobs.ticket.agent, relays: [] },
      { timeout: 15_000 },
    )
    const refused = await openMeshStream(again, SSH_PROTOCOL, bobs.ticket.ticket)
    await expect(firstBytes(refused)).rejects.toThrow()

    // Bob cannot get a new ticket while suspended.
    await expect(bob.connect('dev', bobs.node.peerId.toString())).rejects.toMatchObject({
      code: 'MESH_UNAUTHENTICATED',
    })
  })

  it('should retire an agent once the coordinator refuses its token', async () => {
    await admin.activateUser('bob')
    bob.token = (await bob.login('bob', PASSWORD)).sessionToken
    expect(retired).toBeUndefined()

    // Starting the workspace again hands a new token to a new agent; the old
    // agent's token stops working and its next heartbeat retires it.
    const build = await bob.createBuild('dev', 'start')
    for await (const event of bob.followBuildLogs(build.id)) {
      if (event.type === 'build') expect(event.build.status).toBe('succeeded')
    }
    await eventually('the agent to be retired', () => retired !== undefined)
    expect(retired).toMatchObject({ code: 'MESH_UNAUTHENTICATED' })
  })
})
