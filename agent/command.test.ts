import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { isMeshError } from '../sdk/errors.ts'
import { runAgentCommand } from './index.ts'
import { startFakeCoordinator } from './testing.ts'

const INDEX = new URL('./index.ts', import.meta.url).pathname

function runCommandProcess(env: Record<string, string>) {
  const script = `import { runAgentCommand } from ${JSON.stringify(INDEX)}
try { await runAgentCommand(); console.log('resolved') }
catch (err) { console.log('rejected ' + err.code); process.exitCode = 1 }`
  const child = spawn(
    process.execPath,
    ['--disable-warning=ExperimentalWarning', '--input-type=module', '-e', script],
    {
      env: { ...process.env, CODER_MESH_LOG_LEVEL: 'silent', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let stdout = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.resume()
  return { child, output: () => stdout }
}

describe('runAgentCommand', () => {
  it('should refuse to start without CODER_MESH_URL or CODER_MESH_AGENT_TOKEN', async () => {
    const saved = { url: process.env.CODER_MESH_URL, token: process.env.CODER_MESH_AGENT_TOKEN }
    try {
      delete process.env.CODER_MESH_URL
      process.env.CODER_MESH_AGENT_TOKEN = 't'
      const noUrl = await runAgentCommand().catch((e: unknown) => e)
      expect(isMeshError(noUrl) && noUrl.code).toBe('MESH_BAD_ARGUMENT')
      expect((noUrl as Error).message).toContain('CODER_MESH_URL')

      process.env.CODER_MESH_URL = 'http://127.0.0.1:1'
      delete process.env.CODER_MESH_AGENT_TOKEN
      const noToken = await runAgentCommand().catch((e: unknown) => e)
      expect(isMeshError(noToken) && noToken.code).toBe('MESH_BAD_ARGUMENT')
      expect((noToken as Error).message).toContain('CODER_MESH_AGENT_TOKEN')
    } finally {
      if (saved.url === undefined) delete process.env.CODER_MESH_URL
      else process.env.CODER_MESH_URL = saved.url
      if (saved.token === undefined) delete process.env.CODER_MESH_AGENT_TOKEN
      else process.env.CODER_MESH_AGENT_TOKEN = saved.token
    }
  })

  it('should run until SIGTERM, then stop and let the process exit', async () => {
    const coordinator = await startFakeCoordinator()
    const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-agent-cmd-'))
    try {
      const { child, output } = runCommandProcess({
        CODER_MESH_URL: coordinator.url,
        CODER_MESH_AGENT_TOKEN: coordinator.token,
        CODER_MESH_AGENT_DIR: dir,
      })
      await coordinator.waitForRegistration(0, (r) => r.addrs.length > 0)
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      const [code] = await exited
      clearTimeout(timer)
      expect(code).toBe(0)
      expect(output()).toContain('resolved')
    } finally {
      await coordinator.close()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('should fail with MESH_UNAUTHENTICATED when the token is refused', async () => {
    const coordinator = await startFakeCoordinator({ token: 'right' })
    const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-agent-cmd-'))
    try {
      const { child, output } = runCommandProcess({
        CODER_MESH_URL: coordinator.url,
        CODER_MESH_AGENT_TOKEN: 'wrong',
        CODER_MESH_AGENT_DIR: dir,
      })
      const [code] = await once(child, 'exit')
      expect(code).toBe(1)
      expect(output()).toContain('rejected MESH_UNAUTHENTICATED')
    } finally {
      await coordinator.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
