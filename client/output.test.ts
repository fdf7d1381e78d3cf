import { describe, expect, it } from 'vitest'
import { displayWidth, formatTable, timeAgo } from './output.ts'

describe('formatTable', () => {
  it('should align columns under their headers without trailing spaces', () => {
    const out = formatTable(
      ['NAME', 'STATUS'],
      [
        ['dev', 'running'],
        ['a-longer-name', 'stopped'],
      ],
    )
    expect(out).toBe(
      'NAME            STATUS\n' + 'dev             running\n' + 'a-longer-name   stopped\n',
    )
  })

  it('should count wide characters as two columns', () => {
    expect(displayWidth('日本')).toBe(4)
    expect(formatTable(['A', 'B'], [['日本', 'x']])).toBe('A      B\n日本   x\n')
  })
})

describe('timeAgo', () => {
  it('should describe ages in the largest useful unit', () => {
    const now = Date.parse('2025-01-10T12:00:00Z')
    expect(timeAgo('2025-01-10T11:59:58Z', now)).toBe('just now')
    expect(timeAgo('2025-01-10T11:55:00Z', now)).toBe('5m ago')
    expect(timeAgo('2025-01-10T09:00:00Z', now)).toBe('3h ago')
    expect(timeAgo('2025-01-07T12:00:00Z', now)).toBe('3d ago')
    expect(timeAgo(undefined, now)).toBe('—')
  })
})
