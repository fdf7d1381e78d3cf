import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AgentLogInput } from '../sdk/api-types.ts'
import { createAgentLogs, MAX_AGENT_LOG_LINES, TRUNCATED_TEXT } from './agent-logs.ts'
import { KeyedLock } from './lock.ts'
import { openStore, type Store } from './store.ts'

const line = (text: string): AgentLogInput => ({
  time: new Date().toISOString(),
  stream: 'stdout',
  text,
})

describe('agent logs', () => {
  let dir: string
  let store: Store

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coder-mesh-agent-logs-'))
    store = await openStore(dir)
  })

  afterAll(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })

  const stored = async (workspaceId: string) => {
    const out = []
    for await (const r of store.agentLogs.values({ prefix: `${workspaceId}/` })) out.push(r)
    return out
  }

  it('should number lines and replace them when a new build starts', async () => {
    const logs = createAgentLogs(store, new KeyedLock())
    await logs.append('ws1', { buildId: 'b1', lines: [line('a'), line('b')] })
    await logs.append('ws1', { buildId: 'b1', lines: [line('c')] })
    expect((await stored('ws1')).map((r) => [r.seq, r.text])).toEqual([
      [1, 'a'],
      [2, 'b'],
      [3, 'c'],
    ])

    await logs.append('ws1', { buildId: 'b2', lines: [line('new')] })
    expect((await stored('ws1')).map((r) => [r.buildId, r.seq, r.text])).toEqual([['b2', 1, 'new']])
  })

  it('should stop at the cap with one line saying so, also after a restart', async () => {
    const logs = createAgentLogs(store, new KeyedLock())
    const many = Array.from({ length: 1000 }, (_, i) => line(`line ${i}`))
    for (let i = 0; i < MAX_AGENT_LOG_LINES / 1000 + 1; i++) {
      await logs.append('ws2', { buildId: 'b1', lines: many })
    }
    const records = await stored('ws2')
    expect(records).toHaveLength(MAX_AGENT_LOG_LINES)
    expect(records.at(-1)).toMatchObject({ stream: 'agent', text: TRUNCATED_TEXT })

    // A coordinator started afresh knows the log is full.
    const again = createAgentLogs(store, new KeyedLock())
    expect(await again.append('ws2', { buildId: 'b1', lines: [line('more')] })).toEqual({
      stored: 0,
    })
    await again.remove('ws2')
    expect(await stored('ws2')).toEqual([])
  })
})
