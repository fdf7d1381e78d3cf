import { describe, expect, it } from 'vitest'
import {
  exitStatusCode,
  normalizeServerUrl,
  parseParameters,
  remoteCommand,
  signalExitCode,
  workspaceFromHost,
} from './args.ts'

describe('parseParameters', () => {
  it('should parse k=v pairs, keeping = inside values', () => {
    expect(parseParameters(['cpu=2', 'cmd=a=b', 'empty='])).toEqual({
      cpu: '2',
      cmd: 'a=b',
      empty: '',
    })
  })

  it('should keep the last value of a repeated key', () => {
    expect(parseParameters(['a=1', 'a=2'])).toEqual({ a: '2' })
  })

  it.each(['novalue', '=x', ''])('should refuse %j with MESH_BAD_ARGUMENT', (value) => {
    expect(() => parseParameters([value])).toThrow(
      expect.objectContaining({ code: 'MESH_BAD_ARGUMENT' }),
    )
  })
})

describe('workspaceFromHost', () => {
  it('should strip the coder-mesh. host prefix', () => {
    expect(workspaceFromHost('coder-mesh.dev')).toBe('dev')
    expect(workspaceFromHost('Coder-Mesh.dev-1')).toBe('dev-1')
  })

  it('should leave plain names alone', () => {
    expect(workspaceFromHost('dev')).toBe('dev')
    expect(workspaceFromHost('coder-mesh.')).toBe('coder-mesh.')
    expect(workspaceFromHost('my-coder-mesh.dev')).toBe('my-coder-mesh.dev')
  })
})

describe('remoteCommand', () => {
  it('should join words with spaces like OpenSSH', () => {
    expect(remoteCommand(['wc', '-l'])).toBe('wc -l')
    expect(remoteCommand(['exit 7'])).toBe('exit 7')
    expect(remoteCommand([])).toBeUndefined()
  })
})

describe('exit codes', () => {
  it('should map signals to 128+N', () => {
    expect(signalExitCode('TERM')).toBe(143)
    expect(signalExitCode('SIGKILL')).toBe(137)
    expect(signalExitCode('NOSUCH')).toBe(255)
  })

  it('should keep the low 8 bits of an exit status', () => {
    expect(exitStatusCode(7)).toBe(7)
    expect(exitStatusCode(256)).toBe(0)
    expect(exitStatusCode(4294967295)).toBe(255)
  })
})

describe('normalizeServerUrl', () => {
  it('should add http:// and drop a trailing slash', () => {
    expect(normalizeServerUrl('127.0.0.1:7080')).toBe('http://127.0.0.1:7080')
    expect(normalizeServerUrl('https://mesh.example.com/')).toBe('https://mesh.example.com')
    expect(normalizeServerUrl('http://h/prefix/')).toBe('http://h/prefix')
  })

  it('should refuse other schemes', () => {
    expect(() => normalizeServerUrl('ftp://x')).toThrow(/http/)
  })
})
