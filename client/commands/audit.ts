/**
 * `coder-mesh audit`: the coordinator's audit log, newest first (owner and
 * auditor only).
 */
import type { Command } from 'commander'
import { MeshError } from '../../sdk/errors.ts'
import { examples } from '../cli.ts'
import { outputOption, writeListing, type OutputFormat } from '../output.ts'
import { apiClient } from '../session.ts'
import { parseDuration } from './tokens.ts'

interface AuditFlags {
  user?: string
  action?: string
  since?: string
  limit: string
  output: OutputFormat
}

/** `--since`: an ISO 8601 time, or a duration back from now (`2h`, `7d`). */
export function parseSince(text: string, now = Date.now()): string {
  if (/^\d+[smhdw]/.test(text)) return new Date(now - parseDuration(text) * 1000).toISOString()
  const ms = Date.parse(text)
  if (Number.isNaN(ms)) {
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid --since ${JSON.stringify(text)}: use a time (2024-05-01T10:00:00Z) or a duration (2h, 7d).`,
    )
  }
  return new Date(ms).toISOString()
}

export function registerAuditCommand(program: Command): void {
  examples(
    program
      .command('audit')
      .description('show the audit log, newest first (owner or auditor)')
      .option('--user <username>', 'only what this user did (or tried)')
      .option('--action <action>', 'only this action, or a prefix ending in "." (user.)')
      .option('--since <time>', 'only entries since a time or a duration ago (2h, 7d)')
      .option('--limit <n>', 'at most this many entries', '100')
      .addOption(outputOption())
      .action(async (flags: AuditFlags) => {
        const limit = Number(flags.limit)
        if (!Number.isInteger(limit) || limit < 1) {
          throw new MeshError('MESH_BAD_ARGUMENT', '--limit must be a positive whole number.')
        }
        const since = flags.since === undefined ? undefined : parseSince(flags.since)
        const api = await apiClient()
        const entries = await api.audit({ user: flags.user, action: flags.action, since, limit })
        await writeListing(flags.output, entries, {
          headers: ['TIME', 'USER', 'ACTION', 'TARGET', 'RESULT', 'ADDRESS'],
          row: (e) => [
            e.time,
            e.actor ?? '—',
            e.action,
            e.target,
            e.result === 'success' ? 'ok' : `${e.status} ${e.code ?? ''}`.trim(),
            e.address,
          ],
          empty: 'No audit entries match.',
        })
      }),
    'coder-mesh audit --since 24h',
    'coder-mesh audit --user bob --action user. -o json',
  )
}
