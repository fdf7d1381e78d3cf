import { defineConfig } from 'vitest/config'

// The bench's own test runs after the main suite, alone: it loads the
// machine with sshd, a coordinator, agents and simulated agents, which
// would slow the end-to-end tests beside it past their timeouts.
export default defineConfig({
  test: {
    include: ['bench/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 660_000,
    maxWorkers: 1,
  },
})
