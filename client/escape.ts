/**
 * OpenSSH-style escape sequences for interactive sessions: `~` typed at the
 * start of a line introduces a command. `~.` ends the session at once, `~~`
 * sends one `~`, `~?` lists them. A `~` anywhere else, or followed by any
 * other character, is passed through unchanged.
 */
import { Transform, type TransformCallback } from 'node:stream'

const TILDE = 0x7e
const DOT = 0x2e
const QUESTION = 0x3f
const CR = 0x0d
const LF = 0x0a

export type EscapeAction = 'disconnect' | 'help'

export const ESCAPE_HELP =
  'Supported escape sequences:\r\n' +
  ' ~.   - terminate the session\r\n' +
  ' ~?   - this message\r\n' +
  ' ~~   - send the escape character\r\n' +
  '(Escapes are only recognized immediately after a newline.)\r\n'

export interface EscapeResult {
  /** Bytes to send to the remote side. */
  data: Buffer
  /** What the user asked for, if anything; after `disconnect`, drop all later input. */
  action?: EscapeAction
}

/** Tracks line starts across chunks; feed it every byte typed. */
export class EscapeScanner {
  private atLineStart = true
  private pendingTilde = false

  feed(chunk: Uint8Array): EscapeResult {
    const out: number[] = []
    let action: EscapeAction | undefined
    for (const byte of chunk) {
      if (this.pendingTilde) {
        this.pendingTilde = false
        if (byte === DOT) return { data: Buffer.from(out), action: 'disconnect' }
        if (byte === QUESTION) {
          action = 'help'
          this.atLineStart = true
          continue
        }
        if (byte !== TILDE) out.push(TILDE)
        out.push(byte)
        this.atLineStart = byte === CR || byte === LF
        continue
      }
      if (this.atLineStart && byte === TILDE) {
        this.pendingTilde = true
        continue
      }
      out.push(byte)
      this.atLineStart = byte === CR || byte === LF
    }
    return { data: Buffer.from(out), action }
  }
}

/**
 * A stream that filters typed input through an EscapeScanner and emits
 * `escape` with the action when one is typed.
 */
export function escapeFilter(): Transform {
  const scanner = new EscapeScanner()
  let closed = false
  return new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      if (closed) {
        callback()
        return
      }
      const { data, action } = scanner.feed(chunk)
      if (data.length > 0) this.push(data)
      if (action === 'disconnect') closed = true
      if (action !== undefined) this.emit('escape', action)
      callback()
    },
  })
}
