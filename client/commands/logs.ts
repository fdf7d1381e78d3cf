/**
 * `coder-mesh logs NAME`: the workspace agent's log, that is the output of
 * the template's startup script in the latest start (and the agent's notes
 * about it), from the coordinator. `-f` keeps printing new lines until
 * Ctrl-C; `-o json` prints one JSON line per log line.
 */
import type { Command } from 'commander'
import type { AgentLogLine } from '../../sdk/api-types.ts'
import { parseWorkspaceRef } from '../../sdk/names.ts'
import { examples } from '../cli.ts'
import { notice, outputOption, printable, write, type OutputFormat } from '../output.ts'
import { apiClient } from '../session.ts'

/** One line for people: time, the stream when it is not stdout, the text. */
export function formatAgentLogLine(line: AgentLogLine): string {
  const tag = line.stream === 'stdout' ? '' : `[${line.stream}] `
  return `${line.time} ${tag}${printable(line.text)}\n`
}

export function registerLogsCommand(program: Command): void {
  examples(
    program
      .command('logs')
      .description(
        "show the workspace agent's log: its startup script's output in the latest start",
      )
      .argument('<name>', "workspace name (OWNER/NAME for another user's)")
      .option('-f, --follow', 'keep printing new lines until Ctrl-C')
      .addOption(outputOption())
      .addHelpText(
        'after',
        "\nLines marked [stderr] came from the script's standard error, [agent] from\n" +
          'the agent itself (the script started, how it ended). Up to 10,000 lines or\n' +
          '1 MiB are kept per start; the agent keeps them in startup-script.log too.',
      )
      .action(async (name: string, flags: { follow?: boolean; output: OutputFormat }) => {
        parseWorkspaceRef(name)
        const api = await apiClient()
        const controller = new AbortController()
        const stop = (): void => controller.abort()
        process.once('SIGINT', stop)
        process.once('SIGTERM', stop)
        try {
          const lines = api.agentLogs(name, {
            follow: flags.follow === true,
            signal: controller.signal,
          })
          let count = 0
          for await (const line of lines) {
            count++
            if (flags.output === 'json') await write(JSON.stringify(line) + '\n')
            else await write(formatAgentLogLine(line))
          }
          if (count === 0 && flags.output !== 'json') {
            notice(`No agent log for workspace ${name} yet: its agent has not sent any.`)
          }
        } catch (err) {
          if (!controller.signal.aborted) throw err
        } finally {
          process.off('SIGINT', stop)
          process.off('SIGTERM', stop)
        }
      }),
    'coder-mesh logs dev',
    'coder-mesh logs dev -f',
    'coder-mesh logs dev -o json',
  )
}
