/**
 * `coder-mesh server` flags: --access-url and --stun-address are checked
 * before anything starts (no listening socket, no data folder, no log
 * line), and refused in one line naming the flag with an example. A
 * password in the access URL is never echoed.
 */
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseAccessUrl, parseStunAddress } from '../coordinator/server.ts'
import { newCliUser, removeTree, runCli, type CliUser } from '../test/harness.ts'

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
    const cases: [string[], RegExp][] = [
      [['--access-url', 'notaurl'], /Invalid --access-url "notaurl"/],
      [['--access-url', 'ftp://x'], /use http or https, not ftp/],
      [['--access-url', 'http://h:99999'], /Invalid --access-url "http:\/\/h:99999"/],
      [['--access-url', 'http://user:s3cretpw@127.0.0.1:1/'], /user name or password/],
      [['--stun-address', '1.2.3.4:99999'], /Invalid --stun-address "1\.2\.3\.4:99999"/],
      [['--stun-address', 'nonsense'], /e\.g\. --stun-address 0\.0\.0\.0:3478, or off/],
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
  })
})
