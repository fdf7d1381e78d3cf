import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    // bench/vitest.config.ts runs the bench's test after this suite.
    exclude: ['node_modules/**', 'bench/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // End-to-end tests start real servers, agents and terraform; two cores
    // cannot run many of them side by side without timing out.
    maxWorkers: 2,
  },
})
