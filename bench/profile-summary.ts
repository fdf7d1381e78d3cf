/**
 * Summarizes a V8 CPU profile (`node --cpu-prof`): where the samples fell,
 * by self time per function and per package (or our own folder), so a
 * profile can be read without a browser.
 *
 *   node bench/profile-summary.ts FILE.cpuprofile [--top 25]
 */
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}

interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

/** `node_modules/@scope/pkg/...` → `@scope/pkg`; our files → their folder; else the kind. */
function owner(url: string): string {
  if (url === '') return '(native/VM)'
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm?.[1] !== undefined) return nm[1]
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/')[0]
  const own = /\/work\/[^/]+\/([^/]+)\//.exec(url) ?? /file:\/\/.*\/([^/]+)\/[^/]+$/.exec(url)
  return own?.[1] ?? url
}

const { values, positionals } = parseArgs({
  options: { top: { type: 'string', default: '25' } },
  allowPositionals: true,
})
const profile = JSON.parse(await readFile(positionals[0] ?? '', 'utf8')) as Profile
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map<number, number>()
profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
const total = [...self.values()].reduce((a, b) => a + b, 0)

const fn = new Map<string, number>()
const pkg = new Map<string, number>()
for (const [id, us] of self) {
  const { functionName, url, lineNumber } = byId.get(id)!.callFrame
  const file = url.split('/').slice(-2).join('/')
  const key = `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}`
  fn.set(key, (fn.get(key) ?? 0) + us)
  pkg.set(owner(url), (pkg.get(owner(url)) ?? 0) + us)
}
const top = Number(values.top)
const show = (title: string, map: Map<string, number>): void => {
  console.log(`\n${title} (of ${(total / 1000).toFixed(0)} ms sampled)`)
  for (const [key, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(
      `${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${key}`,
    )
  }
}
show('self time by package', pkg)
show('self time by function', fn)
