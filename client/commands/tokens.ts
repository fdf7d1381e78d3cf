/**
 * `coder-mesh tokens create|list|delete`: API tokens for scripts. A token
 * is printed once, alone on stdout, so `TOKEN=$(coder-mesh tokens create ci)`
 * works; use it as CODER_MESH_SESSION_TOKEN.
 */
import type { Command } from 'commander'
import { MAX_TOKEN_LIFETIME_SECONDS } from '../../sdk/access.ts'
import { MeshError } from '../../sdk/errors.ts'
import { assertName } from '../../sdk/names.ts'
import { examples } from '../cli.ts'
import {
  notice,
  outputOption,
  timeAgo,
  write,
  writeJson,
  writeListing,
  type OutputFormat,
} from '../output.ts'
import { apiClient } from '../session.ts'

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 }

/** `90s`, `30m`, `12h`, `30d`, `2w` (or a sum, `1d12h`) in seconds. */
export function parseDuration(text: string): number {
  const parts = [...text.matchAll(/(\d+)([smhdw])/g)]
  const whole = parts.map((m) => m[0]).join('')
  if (parts.length === 0 || whole !== text) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid duration ${JSON.stringify(text)}: use e.g. 30d, 12h, 90m or 1d12h.`,
    )
  }
  return parts.reduce((sum, m) => sum + Number(m[1]) * UNIT_SECONDS[m[2]!]!, 0)
}

/** "in 3d", "in 5h", "expired" — when a token stops working. */
function expiresIn(iso: string, now = Date.now()): string {
  const seconds = Math.round((Date.parse(iso) - now) / 1000)
  if (Number.isNaN(seconds)) return '—'
  if (seconds <= 0) return 'expired'
  if (seconds < 3600) return `in ${Math.ceil(seconds / 60)}m`
  if (seconds < 48 * 3600) return `in ${Math.round(seconds / 3600)}h`
  return `in ${Math.round(seconds / 86_400)}d`
}

export function registerTokenCommands(program: Command): void {
  const tokens = examples(
    program.command('tokens').description('manage your API tokens'),
    'coder-mesh tokens create ci --lifetime 90d',
    'coder-mesh tokens list',
  )

  examples(
    tokens
      .command('create')
      .description('create an API token and print it (this once: only its hash is kept)')
      .argument('<name>', 'token name, unique among yours')
      .option('--lifetime <duration>', 'how long it works, e.g. 12h, 30d (at most 365d)', '30d')
      .addOption(outputOption())
      .action(async (name: string, flags: { lifetime: string; output: OutputFormat }) => {
        assertName('token', name)
        const lifetimeSeconds = parseDuration(flags.lifetime)
        if (lifetimeSeconds < 60 || lifetimeSeconds > MAX_TOKEN_LIFETIME_SECONDS) {
          throw new MeshError('MESH_BAD_ARGUMENT', 'The lifetime must be between 1m and 365d.')
        }
        const created = await (await apiClient()).createToken({ name, lifetimeSeconds })
        if (flags.output === 'json') {
          await writeJson(created)
          return
        }
        notice(
          `Token ${name} expires ${created.expiresAt}. It is shown only now: store it somewhere safe.`,
        )
        await write(created.token + '\n')
      }),
    'coder-mesh tokens create ci',
    'export CODER_MESH_SESSION_TOKEN=$(coder-mesh tokens create deploy --lifetime 12h)',
  )

  examples(
    tokens
      .command('list')
      .alias('ls')
      .description('list your API tokens')
      .addOption(outputOption())
      .action(async (flags: { output: OutputFormat }) => {
        const api = await apiClient()
        await writeListing(flags.output, await api.tokens(), {
          headers: ['NAME', 'CREATED', 'EXPIRES', 'LAST USED'],
          row: (t) => [
            t.name,
            timeAgo(t.createdAt),
            expiresIn(t.expiresAt),
            t.lastUsedAt === undefined ? 'never' : timeAgo(t.lastUsedAt),
          ],
          empty: "No API tokens: create one with 'coder-mesh tokens create NAME'.",
        })
      }),
    'coder-mesh tokens list -o json',
  )

  examples(
    tokens
      .command('delete')
      .alias('rm')
      .description('delete an API token: it stops working at once')
      .argument('<name>', 'token name')
      .action(async (name: string) => {
        await (await apiClient()).deleteToken(name)
        await write(`Token ${name} deleted\n`)
      }),
    'coder-mesh tokens delete ci',
  )
}
