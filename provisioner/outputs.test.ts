import { describe, expect, it } from 'vitest'
import { MAX_STARTUP_SCRIPT_BYTES, startupOutputs, stateOutputs } from './outputs.ts'

function state(outputs: Record<string, unknown>): Buffer {
  const entries = Object.fromEntries(
    Object.entries(outputs).map(([name, value]) => [name, { value, type: typeof value }]),
  )
  return Buffer.from(JSON.stringify({ version: 4, serial: 3, outputs: entries, resources: [] }))
}

describe('startup outputs', () => {
  it('should read the script and its timeout', () => {
    expect(
      startupOutputs(
        state({ coder_mesh_startup_script: 'echo hi', coder_mesh_startup_script_timeout: 30 }),
      ),
    ).toEqual({ script: 'echo hi', timeoutSeconds: 30, problems: [] })
  })

  it.each([
    ['no state', undefined],
    ['an empty file', Buffer.from('')],
    ['not JSON', Buffer.from('{')],
    ['a state without outputs', Buffer.from('{"version":4,"serial":1}')],
  ])('should find no script in %s', (_what, value) => {
    expect(startupOutputs(value)).toEqual({ script: '', timeoutSeconds: undefined, problems: [] })
    expect(stateOutputs(value)).toEqual({})
  })

  it('should leave out unusable values and say why', () => {
    const result = startupOutputs(
      state({
        coder_mesh_startup_script: ['echo', 'hi'],
        coder_mesh_startup_script_timeout: 'soon',
      }),
    )
    expect(result.script).toBe('')
    expect(result.timeoutSeconds).toBeUndefined()
    expect(result.problems).toHaveLength(2)

    const big = startupOutputs(
      state({ coder_mesh_startup_script: 'x'.repeat(MAX_STARTUP_SCRIPT_BYTES + 1) }),
    )
    expect(big.script).toBe('')
    expect(big.problems[0]).toMatch(/over \d+ bytes/)
  })

  it('should read no timeout from 0', () => {
    expect(startupOutputs(state({ coder_mesh_startup_script_timeout: 0 })).problems).toEqual([])
  })
})
