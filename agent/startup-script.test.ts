import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ENV_AGENT_TOKEN } from '../sdk/config.ts'
import { runStartupScript } from './startup-script.ts'

describe('runStartupScript', () => {
  let dir: string
  const saved = process.env[ENV_AGENT_TOKEN]

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coder-mesh-startup-'))
    process.env[ENV_AGENT_TOKEN] = 'cma_secret-token-value'
  })

  afterAll(async () => {
    if (saved === undefined) delete process.env[ENV_AGENT_TOKEN]
    else process.env[ENV_AGENT_TOKEN] = saved
    await rm(dir, { recursive: true, force: true })
  })

  const run = async (script: string, timeoutSeconds?: number) => {
    const lines: [string, string][] = []
    const result = await runStartupScript({
      script,
      dir,
      timeoutSeconds,
      onLine: (stream, text) => lines.push([stream, text]),
    })
    return { result, lines }
  }

  it('should keep stdout and stderr apart, last line without newline included', async () => {
    const { result, lines } = await run('echo one; echo two >&2; printf three')
    expect(result).toEqual({ outcome: 'ok' })
    expect(lines).toContainEqual(['stdout', 'one'])
    expect(lines).toContainEqual(['stderr', 'two'])
    expect(lines).toContainEqual(['stdout', 'three'])
  })

  it('should not hand the agent token to the script', async () => {
    const { lines } = await run('env')
    expect(lines.some(([, text]) => text.includes('secret-token-value'))).toBe(false)
    expect(lines.some(([, text]) => text.startsWith('HOME='))).toBe(true)
  })

  it('should report a non-zero exit status', async () => {
    const { result } = await run('exit 4')
    expect(result).toEqual({ outcome: 'error', error: 'the startup script exited with status 4' })
  })

  it('should run a #! script as the program it names', async () => {
    const { result, lines } = await run(
      `#!${process.execPath}\nconsole.log('from node ' + process.version)`,
    )
    expect(result.outcome).toBe('ok')
    expect(lines[0]?.[1]).toMatch(/^from node v\d+/)
  })

  it('should stop a script past its timeout', async () => {
    const started = Date.now()
    const { result } = await run('sleep 30', 0.3)
    expect(result).toEqual({ outcome: 'timeout', error: 'timed out after 0.3 s' })
    expect(Date.now() - started).toBeLessThan(5000)
  })

  it('should finish when the script exits, even with a background process holding its output', async () => {
    const started = Date.now()
    const { result } = await run('sleep 5 & echo started')
    expect(result.outcome).toBe('ok')
    expect(Date.now() - started).toBeLessThan(3000)
  })
})
