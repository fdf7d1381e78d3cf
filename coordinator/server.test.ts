import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiClient } from '../sdk/api-client.ts'
import type { BuildLogEvent } from '../sdk/api-types.ts'
import { createLogger } from '../sdk/logger.ts'
import { dialAgent } from '../netstack/dial.ts'
import { createMeshNode } from '../netstack/node.ts'
import { parseAddress, startServer, type RunningServer } from './server.ts'
import {
  openProbe,
  PASSWORD,
  templateBody,
  testCoordinator,
  waitForBuild,
  type Probe,
} from './testing.ts'

const silent = createLogger('mesh:coordinator:test', 'silent')

describe('parseAddress', () => {
  it.each([
    ['127.0.0.1:7080', { host: '127.0.0.1', port: 7080 }],
    ['[::1]:0', { host: '::1', port: 0 }],
    [':8080', { host: '0.0.0.0', port: 8080 }],
  ])('should parse %j', (address, expected) => {
    expect(parseAddress(address)).toEqual(expected)
  })

  it.each(['localhost', '1.2.3.4:99999', 'host:port'])('should refuse %j', (address) => {
    expect(() => parseAddress(address)).toThrow(/Invalid address/)
  })
})

describe('coordinator restarts', () => {
  it('should keep its relay peer id and ticket key, and fail builds a restart interrupted', async () => {
    const first = await testCoordinator()
    const token = await first.owner()
    await first.call('POST', '/api/v1/templates/local/versions', { token, body: templateBody() })
    const created = await first.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    await waitForBuild(first, token, created.json.build.id)
    const peerId = first.coordinator.node.peerId.toString()
    const ticketKey = first.coordinator.ticketKey.publicKey.export({ format: 'der', type: 'spki' })

    // Pretend the process died mid-build: a running build left in the store.
    const build = (await first.coordinator.store.builds.get(created.json.build.id))!
    await first.coordinator.store.builds.put(build.id, { ...build, status: 'running' })
    await first.close()

    const second = await testCoordinator({ dataDir: first.dataDir })
    try {
      expect(second.coordinator.node.peerId.toString()).toBe(peerId)
      const key = second.coordinator.ticketKey.publicKey.export({ format: 'der', type: 'spki' })
      expect(key.equals(ticketKey)).toBe(true)

      const res = await second.call('GET', `/api/v1/builds/${build.id}`, { token })
      expect(res.json).toMatchObject({
        status: 'failed',
        error: 'coordinator restarted during the build',
      })
      expect((await second.call('GET', '/api/v1/workspaces/dev', { token })).json.status).toBe(
        'failed',
      )
    } finally {
      await second.cleanup()
    }
  })

  it('should cancel running builds at close once the grace period ends', async () => {
    const probe = await openProbe()
    const t = await testCoordinator()
    const token = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: probe.template })

    // Held at the gate for good: only the cancel ends its terraform apply.
    await probe.hold('dev')
    const created = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'dev', template: 'local' },
    })
    await probe.held('dev')
    await t.close()

    const reopened = await testCoordinator({ dataDir: t.dataDir })
    try {
      const res = await reopened.call('GET', `/api/v1/builds/${created.json.build.id}`, { token })
      expect(res.json).toMatchObject({ status: 'failed', error: 'terraform apply: canceled' })
    } finally {
      await reopened.cleanup()
      await probe.cleanup()
    }
  })
})

describe('shutdown', () => {
  it('should take no new work once closing: a build asked for then fails with a reason', async () => {
    const probe = await openProbe()
    const t = await testCoordinator()
    const token = await t.owner()
    await t.call('POST', '/api/v1/templates/local/versions', { token, body: probe.template })
    const first = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'one', template: 'local' },
    })
    await waitForBuild(t, token, first.json.build.id)

    await probe.hold('two')
    const running = await t.call('POST', '/api/v1/workspaces', {
      token,
      body: { name: 'two', template: 'local' },
    })
    await probe.held('two')

    const closed = t.close()
    expect((await t.call('GET', '/readyz')).status).toBe(503)
    // Still open while the running build has its grace period: a late request.
    const late = await t.call('POST', '/api/v1/workspaces/one/builds', {
      token,
      body: { transition: 'stop' },
    })
    expect(late.status).toBe(201)
    await probe.release('two')
    await closed

    const reopened = await testCoordinator({ dataDir: t.dataDir })
    try {
      const lateBuild = await reopened.call('GET', `/api/v1/builds/${late.json.id}`, { token })
      expect(lateBuild.json).toMatchObject({
        status: 'failed',
        error: 'coordinator shut down before the build started',
      })
      const finished = await reopened.call('GET', `/api/v1/builds/${running.json.build.id}`, {
        token,
      })
      expect(finished.json.status).toBe('succeeded')
    } finally {
      await reopened.cleanup()
      await probe.cleanup()
    }
  })
})

describe('startServer errors', () => {
  it('should refuse a data folder another server holds, and a port in use', async () => {
    const held = await testCoordinator()
    try {
      await expect(
        startServer({ address: '127.0.0.1:0', dataDir: held.dataDir, log: silent }),
      ).rejects.toThrow(/in use by another coder-mesh server/)

      const blocker = createServer()
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
      const port = (blocker.address() as AddressInfo).port
      await expect(
        startServer({ address: `127.0.0.1:${port}`, dataDir: held.dataDir, log: silent }),
      ).rejects.toThrow(/Cannot listen on/)
      blocker.close()
    } finally {
      await held.cleanup()
    }
  })
})

describe('startServer', () => {
  let server: RunningServer
  let dataDir: string
  let client: ApiClient
  let probe: Probe

  beforeAll(async () => {
    probe = await openProbe()
    dataDir = await mkdtemp(join(tmpdir(), 'mesh-server-'))
    server = await startServer({
      address: '127.0.0.1:0',
      dataDir,
      p2pListen: ['/ip4/127.0.0.1/tcp/0'],
      log: silent,
    })
    client = new ApiClient({ url: server.url })
    await client.createFirstUser({ username: 'alice', email: 'a@example.com', password: PASSWORD })
    client.token = (await client.login('alice', PASSWORD)).sessionToken
  })

  afterAll(async () => {
    await server?.close()
    await rm(dataDir, { recursive: true, force: true })
    await probe?.cleanup()
  })

  it('should serve the API on a free port and report its relay addresses', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(server.relayAddrs[0]).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3Koo/)
    expect(await (await fetch(`${server.url}/healthz`)).text()).toBe('ok')
    expect((await client.me()).username).toBe('alice')
  })

  it('should stream a build log over HTTP to the final build event', async () => {
    await client.pushTemplate('local', probe.template)
    const { build } = await client.createWorkspace({ name: 'dev', template: 'local' })
    const events: BuildLogEvent[] = []
    for await (const event of client.followBuildLogs(build.id)) events.push(event)
    expect(events.at(-1)).toMatchObject({ type: 'build', build: { status: 'succeeded' } })
    const texts = events.flatMap((e) => (e.type === 'log' ? [e.text] : []))
    expect(texts).toContain('Apply complete! Resources: 1 added, 0 changed, 0 destroyed.')
  })

  it('should relay only for registered agents, and only to clients holding a ticket', async () => {
    const relayAddr = server.relayAddrs[0]!
    const strangerKey = await generateKeyPair('Ed25519')
    await expect(
      createMeshNode({ privateKey: strangerKey, listen: [`${relayAddr}/p2p-circuit`] }),
    ).rejects.toThrow(/PERMISSION_DENIED/)

    const agentKey = await generateKeyPair('Ed25519')
    const agentPeer = peerIdFromPrivateKey(agentKey).toString()
    const agentToken = await probe.agentToken('dev')
    const agentApi = new ApiClient({ url: server.url, token: agentToken })
    await agentApi.registerAgent({ peerId: agentPeer, addrs: [], version: 'test' })
    const agent = await createMeshNode({
      privateKey: agentKey,
      listen: [`${relayAddr}/p2p-circuit`],
    })
    const user = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [] })
    try {
      const target = { peerId: agentPeer, addrs: [], relays: [relayAddr] }
      await expect(dialAgent(user, target, { timeout: 5000 })).rejects.toThrow(/any path/)

      await client.connect('dev', user.peerId.toString())
      const connection = await dialAgent(user, target, { timeout: 5000 })
      expect(connection.remoteAddr.toString()).toContain('/p2p-circuit')
    } finally {
      await Promise.all([agent.stop(), user.stop()])
    }
  })
})
