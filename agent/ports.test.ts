import { execa } from 'execa'
import { createServer } from 'node:net'
import { describe, expect, it } from 'vitest'
import { createPortScanner, decodeAddress, parseProcNetTcp } from './ports.ts'

describe('listening ports', () => {
  it.each([
    ['0100007F', '127.0.0.1'],
    ['00000000', '0.0.0.0'],
    ['00000000000000000000000000000000', '::'],
    ['00000000000000000000000001000000', '::1'],
    ['0000000000000000FFFF00000100007F', '::ffff:127.0.0.1'],
    ['B80D0120000000000000000001000000', '2001:db8::1'],
  ])('should decode %s as %s', (hex, address) => {
    expect(decodeAddress(hex)).toBe(address)
  })

  it('should keep only LISTEN sockets of a /proc/net/tcp table', () => {
    const text = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0',
      '   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0',
      '',
    ].join('\n')
    expect(parseProcNetTcp(text, 'tcp')).toEqual([
      { port: 8080, network: 'tcp', address: '127.0.0.1', inode: '4242' },
    ])
  })

  it("should find another process's listener with its name, and leave out its own", async () => {
    const child = execa(
      process.execPath,
      [
        '-e',
        "require('net').createServer().listen(0, '127.0.0.1', function () { console.log(this.address().port) })",
      ],
      { reject: false },
    )
    try {
      const port = await new Promise<number>((resolve) =>
        child.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
      )
      const scan = createPortScanner()
      const ports = await scan()
      expect(ports).toContainEqual({ port, network: 'tcp', address: '127.0.0.1', process: 'node' })
      // One of this process's own is left out (the agent's libp2p listener is).
      const own = createServer()
      await new Promise<void>((resolve) => own.listen(0, '127.0.0.1', resolve))
      const ownPort = (own.address() as { port: number }).port
      expect((await scan()).map((p) => p.port)).not.toContain(ownPort)
      await new Promise<void>((resolve) => own.close(() => resolve()))
      // A second scan reuses what it learned: each listener still there is
      // the same, named the same. (Other tests on this machine open and
      // close listeners of their own meanwhile, so the lists may differ.)
      const again = await scan()
      const key = (p: { port: number; network: string; address: string }): string =>
        `${p.network} ${p.address} ${p.port}`
      const before = new Map(ports.map((p) => [key(p), p]))
      const kept = again.filter((p) => before.has(key(p)))
      expect(kept).toContainEqual({ port, network: 'tcp', address: '127.0.0.1', process: 'node' })
      for (const listener of kept) expect(listener).toEqual(before.get(key(listener)))
    } finally {
      child.kill()
      await child
    }
  })
})
