import { describe, expect, it } from 'vitest'
import { Slots } from './slots.ts'

describe('Slots', () => {
  it('should run at most the limit at once, the rest in arrival order, none lost', async () => {
    const slots = new Slots(3)
    let running = 0
    let most = 0
    const started: number[] = []
    const gates: (() => void)[] = []
    const tasks = Array.from({ length: 10 }, (_, i) =>
      slots.run(async () => {
        started.push(i)
        running++
        most = Math.max(most, running)
        await new Promise<void>((resolve) => gates.push(resolve))
        running--
        return i
      }),
    )

    // Open the gates one at a time, and keep adding work as slots free up.
    const late = [] as Promise<number>[]
    while (started.length < 10 || gates.length > 0) {
      await new Promise((resolve) => setImmediate(resolve))
      if (late.length < 2 && started.length >= 5)
        late.push(slots.run(async () => 100 + late.length))
      gates.shift()?.()
    }
    expect(await Promise.all(tasks)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    await Promise.all(late)
    expect(most).toBe(3)
    expect(started).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    expect(slots.idle).toBe(true)
  })

  it('should free the slot of a task that failed', async () => {
    const slots = new Slots(1)
    await expect(slots.run(() => Promise.reject(new Error('no')))).rejects.toThrow('no')
    expect(await slots.run(() => Promise.resolve('next'))).toBe('next')
    expect(slots.idle).toBe(true)
  })
})
