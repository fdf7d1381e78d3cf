/**
 * At most `limit` tasks at a time; the others wait their turn, in order.
 * The CLI's way of keeping to the agent's limit of streams per protocol on
 * one connection (MAX_STREAMS_PER_PROTOCOL): the 1025th local connection
 * waits for a stream to end instead of being refused.
 */
export class Slots {
  private readonly limit: number
  private readonly waiting: (() => void)[] = []
  private active = 0

  constructor(limit: number) {
    this.limit = limit
  }

  /** Whether no task runs or waits. */
  get idle(): boolean {
    return this.active === 0
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active < this.limit) {
      this.active++
    } else {
      // The slot is handed over by the task that ends (below), so a task
      // arriving meanwhile cannot take it first.
      await new Promise<void>((resolve) => this.waiting.push(resolve))
    }
    try {
      return await task()
    } finally {
      const next = this.waiting.shift()
      if (next !== undefined) next()
      else this.active--
    }
  }
}
