/**
 * Shared pieces of command definitions.
 */
import type { Command } from 'commander'

/** Adds an "Example:" section to a command's --help. */
export function examples(command: Command, ...lines: string[]): Command {
  const body = lines.map((line) => `  $ ${line}`).join('\n')
  return command.addHelpText('after', `\nExample${lines.length > 1 ? 's' : ''}:\n${body}\n`)
}

/**
 * What the CLI does once a command's action has returned. Most commands are
 * done and the process exits (after flushing stdout) with `exitCode`; the
 * server and the agent keep running until they stop themselves.
 */
export const lifetime = {
  keepRunning: false,
  exitCode: 0,
}

/** The global --verbose flag, wherever it was given. */
export function isVerbose(command: Command): boolean {
  return command.optsWithGlobals<{ verbose?: boolean }>().verbose === true
}
