import { describe, expect, it } from 'vitest'
import { EscapeScanner } from './escape.ts'

function typed(...chunks: string[]): { sent: string; actions: string[] } {
  const scanner = new EscapeScanner()
  let sent = ''
  const actions: string[] = []
  for (const chunk of chunks) {
    const r = scanner.feed(Buffer.from(chunk))
    sent += r.data.toString()
    if (r.action !== undefined) actions.push(r.action)
    if (r.action === 'disconnect') break
  }
  return { sent, actions }
}

describe('EscapeScanner', () => {
  it('should disconnect on ~. at the start of the session or of a line', () => {
    expect(typed('~.')).toEqual({ sent: '', actions: ['disconnect'] })
    expect(typed('ls\r~.')).toEqual({ sent: 'ls\r', actions: ['disconnect'] })
    expect(typed('ls\r', '~', '.')).toEqual({ sent: 'ls\r', actions: ['disconnect'] })
  })

  it('should pass a ~ in the middle of a line through', () => {
    expect(typed('cd ~.', '\r')).toEqual({ sent: 'cd ~.\r', actions: [] })
  })

  it('should send one ~ for ~~ and both bytes for ~ plus another key', () => {
    expect(typed('\r~~x')).toEqual({ sent: '\r~x', actions: [] })
    expect(typed('~/bin\r')).toEqual({ sent: '~/bin\r', actions: [] })
  })

  it('should report ~? as help without sending it', () => {
    expect(typed('~?')).toEqual({ sent: '', actions: ['help'] })
  })
})
