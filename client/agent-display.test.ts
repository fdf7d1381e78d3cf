import { describe, expect, it } from 'vitest'
import { formatAgentLogLine } from './commands/logs.ts'
import { describePorts, describeStats, formatBytes } from './commands/workspaces.ts'

describe('how agent logs, stats and ports are printed', () => {
  it('should print a log line with its stream, and terminal commands in it made visible', () => {
    const line = { type: 'log' as const, seq: 1, buildId: 'b', time: 'T' }
    expect(formatAgentLogLine({ ...line, stream: 'stdout', text: 'hello' })).toBe('T hello\n')
    expect(formatAgentLogLine({ ...line, stream: 'stderr', text: 'oops' })).toBe(
      'T [stderr] oops\n',
    )
    expect(formatAgentLogLine({ ...line, stream: 'stdout', text: '\u001b]0;pwned\u0007x' })).toBe(
      'T \\u001b]0;pwned\\u0007x\n',
    )
  })

  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1536, '1.5 KiB'],
    [25 * 1024 ** 3, '25 GiB'],
  ])('should print %d bytes as %s', (n, text) => {
    expect(formatBytes(n)).toBe(text)
  })

  it('should print ports one a line, with the process when known', () => {
    expect(
      describePorts([
        { port: 22, network: 'tcp', address: '0.0.0.0', process: 'sshd' },
        { port: 8080, network: 'tcp6', address: '::' },
      ]),
    ).toBe('22/tcp sshd (0.0.0.0)\n8080/tcp6 (::)')
    expect(describePorts([])).toBe('none')
  })

  it('should print stats as labelled rows', () => {
    const rows = describeStats({
      time: new Date().toISOString(),
      cpuPercent: 12.5,
      cpuCores: 4,
      memoryUsedBytes: 1024 ** 3,
      memoryTotalBytes: 4 * 1024 ** 3,
      diskUsedBytes: 0,
      diskTotalBytes: 0,
      sshSessions: 2,
      connections: { direct: 1, relayed: 1 },
      rxBytes: 2048,
      txBytes: 10,
    })
    expect(Object.fromEntries(rows)).toMatchObject({
      CPU: '12.5% of 4 cores',
      Memory: '1.0 GiB of 4.0 GiB (25%)',
      Disk: '—',
      'SSH sessions': '2',
      Connections: '1 direct, 1 relayed',
      Traffic: '2.0 KiB in, 10 B out',
    })
  })
})
