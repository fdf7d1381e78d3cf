/**
 * `npm run bench`: every coder-mesh benchmark, one after another. Not a
 * test: it prints figures for people to compare (ratios to raw loopback
 * taken in the same run travel better between machines than absolutes).
 */
import { runForwardBench } from './forward.ts'

await runForwardBench({ mib: 256, runs: 3, connections: 20 })
