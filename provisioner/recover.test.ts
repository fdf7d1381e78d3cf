/**
 * recoverWorkdir's care with processes, and the state helpers it feeds.
 * The whole crash and restart, with a real server, is in
 * coordinator/recovery.test.ts.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { groupMembers } from './processes.ts'
import { recoverWorkdir } from './recover.ts'
import { isNewerState, stateIsEmpty, summarizeState } from './state.ts'
import { PROCESS_FILE, RUN_DIR } from './workdir.ts'

let root: string
const pids: number[] = []

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'mesh-recover-'))
})

afterAll(async () => {
  for (const pid of pids) {
    try {
      process.kill(-pid, 'SIGKILL')
    } catch {
      // Gone.
    }
  }
  await rm(root, { recursive: true, force: true })
})

const state = (serial: number, lineage: string, resources: unknown[]) =>
  Buffer.from(JSON.stringify({ version: 4, serial, lineage, resources }))
const managed = { mode: 'managed', type: 'terraform_data', name: 'a', instances: [{}] }

describe('recoverWorkdir', () => {
  it('answers found: false for a build that left no working directory', async () => {
    const lines: string[] = []
    const result = await recoverWorkdir(root, 'never-started', { onLog: (l) => lines.push(l) })
    expect(result).toEqual({ found: false, stopped: [], removed: true })
    expect(lines).toEqual([])
  })

  it('leaves alone a process the record names that is not terraform, and reads the state', async () => {
    const dir = join(root, 'build-1')
    await mkdir(join(dir, RUN_DIR), { recursive: true })
    // Its pid was reused by something else, here even in the same folder.
    const stranger = spawn('sleep', ['300'], { cwd: dir, detached: true, stdio: 'ignore' })
    const pid = stranger.pid!
    pids.push(pid)
    const record = { pid, pgid: pid, binary: 'terraform', cwd: dir }
    await writeFile(join(dir, PROCESS_FILE), JSON.stringify(record))
    await writeFile(join(dir, 'terraform.tfstate'), state(2, 'l', [managed]))

    const lines: string[] = []
    const result = await recoverWorkdir(root, 'build-1', { onLog: (l) => lines.push(l) })

    expect(result).toMatchObject({ found: true, stopped: [], removed: true })
    expect(summarizeState(result.state)).toEqual({ serial: 2, lineage: 'l', resources: 1 })
    expect(groupMembers(pid).map((p) => p.pid)).toEqual([pid])
    expect(existsSync(dir)).toBe(false)
    expect(lines).toEqual([])
  })

  it('refuses a build id that is not one folder name', async () => {
    await expect(recoverWorkdir(root, '../x', { onLog: () => undefined })).rejects.toMatchObject({
      code: 'MESH_BAD_REQUEST',
    })
  })
})

describe('Terraform state', () => {
  it('tells an empty state from one that records resources', () => {
    expect(stateIsEmpty(undefined)).toBe(true)
    expect(stateIsEmpty(Buffer.from(''))).toBe(true)
    expect(stateIsEmpty(Buffer.from(' \n'))).toBe(true)
    expect(stateIsEmpty(state(1, 'l', []))).toBe(true)
    // Data sources and resources whose instances are all gone create nothing.
    expect(stateIsEmpty(state(1, 'l', [{ ...managed, mode: 'data' }]))).toBe(true)
    expect(stateIsEmpty(state(1, 'l', [{ ...managed, instances: [] }]))).toBe(true)
    expect(stateIsEmpty(state(1, 'l', [managed]))).toBe(false)
    // Nobody can tell what an unreadable state holds.
    expect(stateIsEmpty(Buffer.from('not a state'))).toBe(false)
    expect(stateIsEmpty(Buffer.from('{"resources": 3, "serial": 1}'))).toBe(false)
  })

  it('takes the newer of two states by lineage and serial', () => {
    const stored = state(3, 'l', [managed])
    expect(isNewerState(state(4, 'l', []), stored)).toBe(true)
    expect(isNewerState(state(3, 'l', []), stored)).toBe(false)
    expect(isNewerState(state(2, 'l', [managed]), stored)).toBe(false)
    expect(isNewerState(state(1, 'other', []), stored)).toBe(true)
    expect(isNewerState(state(1, 'l', []), undefined)).toBe(true)
    expect(isNewerState(state(1, 'l', []), Buffer.from('garbage'))).toBe(true)
    // An empty file (Terraform's before it saves anything) replaces nothing.
    expect(isNewerState(Buffer.from(''), undefined)).toBe(false)
    expect(isNewerState(Buffer.from('garbage'), undefined)).toBe(false)
  })
})
