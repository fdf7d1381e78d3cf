/**
 * Questions on the terminal. Prompts are written to stderr, so stdout stays
 * clean for results. They are only asked when both stdin and stderr are
 * terminals; callers decide what to do otherwise (a flag, or an error
 * naming the flag).
 */
import { createInterface } from 'node:readline/promises'
import { StringDecoder } from 'node:string_decoder'
import { MeshError } from '../sdk/errors.ts'

export function canPrompt(): boolean {
  return process.stdin.isTTY === true && process.stderr.isTTY === true
}

function canceled(): MeshError {
  return new MeshError('MESH_BAD_ARGUMENT', 'Canceled.')
}

/** Asks for a line of text; an empty answer takes `fallback` when given. */
export async function ask(question: string, fallback?: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true })
  const controller = new AbortController()
  rl.on('SIGINT', () => controller.abort())
  try {
    const label = fallback === undefined ? question : `${question} (${fallback})`
    const answer = (await rl.question(`${label}: `, { signal: controller.signal })).trim()
    return answer === '' && fallback !== undefined ? fallback : answer
  } catch (err) {
    if (controller.signal.aborted) {
      process.stderr.write('\n')
      throw canceled()
    }
    throw err
  } finally {
    rl.close()
  }
}

/** Asks a yes/no question; only "y" or "yes" is yes. */
export async function confirm(question: string): Promise<boolean> {
  const answer = await ask(`${question} [y/N]`)
  return /^y(es)?$/i.test(answer)
}

/** Asks for a secret without echoing it. Ctrl-C cancels. */
export async function askHidden(question: string): Promise<string> {
  const stdin = process.stdin
  process.stderr.write(`${question}: `)
  const decoder = new StringDecoder('utf8')
  stdin.setRawMode(true)
  stdin.resume()

  return new Promise<string>((resolve, reject) => {
    let value = ''
    const finish = (): void => {
      stdin.off('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
      process.stderr.write('\n')
    }
    const onData = (chunk: Buffer): void => {
      for (const ch of decoder.write(chunk)) {
        if (ch === '\r' || ch === '\n') {
          finish()
          resolve(value)
          return
        }
        if (ch === '\u0003' || (ch === '\u0004' && value === '')) {
          finish()
          reject(canceled())
          return
        }
        if (ch === '\u007f' || ch === '\b') {
          value = Array.from(value).slice(0, -1).join('')
        } else if (ch === '\u0015') {
          value = ''
        } else if (ch >= ' ') {
          value += ch
        }
      }
    }
    stdin.on('data', onData)
  })
}
