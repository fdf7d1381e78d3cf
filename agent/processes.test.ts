import { spawn } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import {
  clampDimension,
  isAllowedClientEnv,
  sanitizeTerm,
  sessionAlive,
  sessionEnvironment,
  sessionUser,
  signalName,
  terminateSession,
} from './processes.ts'

describe('session helpers', () => {
  it('should clamp terminal sizes to 1..1000 and reject non-numbers', () => {
    expect(clampDimension(80)).toBe(80)
    expect(clampDimension(0)).toBe(1)
    expect(clampDimension(-5)).toBe(1)
    expect(clampDimension(99999)).toBe(1000)
    expect(clampDimension(80.7)).toBe(80)
    expect(clampDimension(Number.NaN)).toBeUndefined()
    expect(clampDimension(Number.POSITIVE_INFINITY)).toBeUndefined()
    expect(clampDimension('80')).toBeUndefined()
  })

  it('should allow only locale, terminal, TZ and GIT_PROTOCOL from clients', () => {
    expect(isAllowedClientEnv('LANG', 'C.UTF-8')).toBe(true)
    expect(isAllowedClientEnv('COLORTERM', 'truecolor')).toBe(true)
    expect(isAllowedClientEnv('TZ', 'Europe/Paris')).toBe(true)
    expect(isAllowedClientEnv('GIT_PROTOCOL', 'version=2')).toBe(true)
    expect(isAllowedClientEnv('BASH_ENV', '/tmp/x')).toBe(false)
    expect(isAllowedClientEnv('LC_ALL', 'C')).toBe(true)
    expect(isAllowedClientEnv('LC_MESSAGES', 'C')).toBe(true)
    expect(isAllowedClientEnv('LD_PRELOAD', '/x.so')).toBe(false)
    expect(isAllowedClientEnv('PATH', '/tmp')).toBe(false)
    expect(isAllowedClientEnv('LC_', 'C')).toBe(false)
    expect(isAllowedClientEnv('LANG', 'a\0b')).toBe(false)
  })

  it('should name signals without SIG', () => {
    expect(signalName(15)).toBe('TERM')
    expect(signalName('SIGKILL')).toBe('KILL')
    expect(signalName(0)).toBeUndefined()
    expect(signalName(null)).toBeUndefined()
  })

  it('should pass plausible terminal names and replace others', () => {
    expect(sanitizeTerm('xterm-256color')).toBe('xterm-256color')
    expect(sanitizeTerm('')).toBe('xterm-256color')
    expect(sanitizeTerm('x; rm -rf /')).toBe('xterm-256color')
  })

  it('should find a usable shell and home', () => {
    const user = sessionUser()
    expect(user.shell).toMatch(/^\//)
    expect(user.home).toMatch(/^\//)
    expect(user.name).toBeTruthy()
  })

  it('should build the session environment without secrets and with TERM only on a PTY', () => {
    process.env.CODER_MESH_AGENT_TOKEN = 'secret'
    try {
      const user = { name: 'u', home: '/home/u', shell: '/bin/sh' }
      const piped = sessionEnvironment({ user, clientEnv: { LANG: 'C.UTF-8' } })
      expect(piped.CODER_MESH_AGENT_TOKEN).toBeUndefined()
      expect(piped.TERM).toBeUndefined()
      expect(piped).toMatchObject({ HOME: '/home/u', USER: 'u', SHELL: '/bin/sh', LANG: 'C.UTF-8' })
      const pty = sessionEnvironment({ user, clientEnv: {}, term: 'vt100' })
      expect(pty.TERM).toBe('vt100')
    } finally {
      delete process.env.CODER_MESH_AGENT_TOKEN
    }
  })

  it('should end a whole session, HUP first, KILL for what ignores HUP', async () => {
    const child = spawn('/bin/sh', ['-c', "trap '' HUP; sleep 60 & sleep 60; wait"], {
      detached: true,
      stdio: 'ignore',
    })
    const sid = child.pid!
    await new Promise((r) => setTimeout(r, 200))
    expect(sessionAlive(sid)).toBe(true)
    const started = Date.now()
    await terminateSession(sid, 1000)
    expect(Date.now() - started).toBeGreaterThanOrEqual(900)
    await new Promise((r) => setTimeout(r, 200))
    expect(sessionAlive(sid)).toBe(false)
  })
})
