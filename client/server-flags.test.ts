/**
 * `coder-mesh server` flags: --access-url and the listening addresses
 * (--stun-address, --relay-address, --relay-ws-address) are checked
 * before anything starts (no listening socket, no data folder, no log
 * line), and refused in one line naming the flag with an example. A
 * password in the access URL is never echoed.
 */
import { access, mkdtemp } from 'node:fs/promises'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  parseAccessUrl,
  parseStunAddress,
  relayListen,
  startServer,
} from '../coordinator/server.ts'
import { createLogger } from '../sdk/logger.ts'
import { freePort, newCliUser, removeTree, runCli, type CliUser } from '../test/harness.ts'

describe('server flag checks', () => {
  it.each([
    ['http://dev.example.com:7080/', 'http://dev.example.com:7080'],
    ['https://Mesh.Example.com', 'https://mesh.example.com'],
    ['http://[::1]:7080', 'http://[::1]:7080'],
    ['https://proxy.example.com/mesh/', 'https://proxy.example.com/mesh'],
  ])('should take --access-url %j as %j', (raw, want) => {
    expect(parseAccessUrl(raw)).toBe(want)
  })

  it.each([
    ['notaurl', /http or https URL/],
    ['ftp://x', /use http or https, not ftp/],
    ['http://', /http or https URL/],
    ['http://h:99999', /port \(1-65535\)/],
    ['http://h:0', /port 0/],
    ['http://h/?a=1', /query/],
    ['http://h/#top', /fragment/],
    ['http://user:s3cretpw@127.0.0.1:1/', /user name or password/],
    ['http://user:s3cretpw@127.0.0.1:99999/', /http or https URL/],
  ])('should refuse --access-url %j', (raw, why) => {
    let err: unknown
    try {
      parseAccessUrl(raw)
    } catch (e) {
      err = e
    }
    expect(err).toMatchObject({ code: 'MESH_BAD_ARGUMENT' })
    const message = (err as Error).message
    expect(message).toMatch(why)
    expect(message).toMatch(/^Invalid --access-url.*e\.g\. --access-url http:\/\/\S+\.$/)
    expect(message).not.toContain('s3cretpw')
  })

  it('should take STUN addresses as IPV4:PORT or off, and refuse others', () => {
    expect(parseStunAddress('0.0.0.0:3478')).toBe('0.0.0.0:3478')
    expect(parseStunAddress(':0')).toBe(':0')
    expect(parseStunAddress(false)).toBe(false)
    for (const bad of ['x', '3478', '999.1.1.1:3478', '1.2.3.4:70000', '[::1]:3478']) {
      expect(() => parseStunAddress(bad)).toThrow(/^Invalid --stun-address .*e\.g\./)
    }
  })

  it('should take relay addresses as IPV4:PORT, the WebSockets one also off', () => {
    expect(relayListen()).toEqual(['/ip4/0.0.0.0/tcp/0', '/ip4/0.0.0.0/tcp/0/ws'])
    expect(relayListen('127.0.0.1:7081', '127.0.0.1:7082')).toEqual([
      '/ip4/127.0.0.1/tcp/7081',
      '/ip4/127.0.0.1/tcp/7082/ws',
    ])
    expect(relayListen(':7081', false)).toEqual(['/ip4/0.0.0.0/tcp/7081'])
    for (const bad of ['x', '7081', '1.2.3.4:70000', '[::1]:7081', 'h.example:7081']) {
      expect(() => relayListen(bad)).toThrow(/^Invalid --relay-address .*e\.g\. --relay-address/)
      expect(() => relayListen(':0', bad)).toThrow(/^Invalid --relay-ws-address .*or off\.$/)
    }
  })
})

describe('coder-mesh server with a pinned relay', () => {
  it('should listen and hand out the relay on the given port only', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'coder-mesh-relay-flag-'))
    const port = await freePort()

    const server = await startServer({
      address: '127.0.0.1:0',
      dataDir,
      relayAddress: `127.0.0.1:${port}`,
      relayWsAddress: false,
      stunAddress: false,
      log: createLogger('relay-flag-test', 'silent'),
    })
    try {
      expect(server.relayAddrs).toHaveLength(1)
      expect(server.relayAddrs[0]).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/${port}/p2p/`))
    } finally {
      await server.close()
      await removeTree(dataDir)
    }
  })
})

describe('coder-mesh server with bad flags', () => {
  let cli: CliUser

  beforeAll(async () => {
    cli = await newCliUser()
  })

  afterAll(async () => {
    if (cli !== undefined) await removeTree(cli.home)
  })

  it('should refuse them in one line before anything starts', { timeout: 120_000 }, async () => {
    const held = createServer().listen(0, '127.0.0.1')
    await once(held, 'listening')
    const heldPort = (held.address() as AddressInfo).port
    const port = await freePort()
    const cases: [string[], RegExp][] = [
      [['--access-url', 'notaurl'], /Invalid --access-url "notaurl"/],
      [['--access-url', 'ftp://x'], /use http or https, not ftp/],
      [['--access-url', 'http://h:99999'], /Invalid --access-url "http:\/\/h:99999"/],
      [['--access-url', 'http://user:s3cretpw@127.0.0.1:1/'], /user name or password/],
      [['--stun-address', '1.2.3.4:99999'], /Invalid --stun-address "1\.2\.3\.4:99999"/],
      [['--stun-address', 'nonsense'], /e\.g\. --stun-address 0\.0\.0\.0:3478, or off/],
      [['--relay-address', 'any:7081'], /Invalid --relay-address "any:7081"/],
      [['--relay-ws-address', '1.2.3.4'], /e\.g\. --relay-ws-address 0\.0\.0\.0:7082, or off/],
      [
        ['--relay-address', `127.0.0.1:${port}`, '--relay-ws-address', `:${port}`],
        new RegExp(`--relay-address and --relay-ws-address both ask for port ${port}`),
      ],
      [
        ['--address', `127.0.0.1:${port}`, '--relay-address', `127.0.0.1:${port}`],
        new RegExp(`--address and --relay-address both ask for port ${port}`),
      ],
      [
        ['--relay-ws-address', `127.0.0.1:${heldPort}`],
        new RegExp(`Cannot listen on --relay-ws-address 127\\.0\\.0\\.1:${heldPort}: .*EADDRINUSE`),
      ],
    ]
    const runs = await Promise.all(
      cases.map(async ([flags], i) => {
        const dataDir = join(cli.home, `data-${i}`)
        const args = ['server', '--address', '127.0.0.1:0', '--data-dir', dataDir, ...flags]
        return { dataDir, r: await runCli(cli.env, args) }
      }),
    )
    for (const [i, { dataDir, r }] of runs.entries()) {
      const [flags, why] = cases[i]!
      expect(r.exitCode, `${flags.join(' ')}: ${r.stderr}`).toBe(1)
      // One line, no log lines before it (`relay listening`, `STUN listening`).
      expect(r.stderr).toMatch(/^error: .*\(MESH_BAD_ARGUMENT\)\n$/)
      expect(r.stderr).toMatch(why)
      expect(r.stdout).toBe('')
      expect(r.stderr + r.stdout).not.toContain('s3cretpw')
      // The store was never opened.
      await expect(access(dataDir)).rejects.toThrow(/ENOENT/)
    }
    held.close()
  })
})
