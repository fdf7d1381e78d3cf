/**
 * Turns a byte stream into lines as they complete. A line longer than
 * MAX_LINE is passed on in pieces, cut where no secret is split.
 */
import { StringDecoder } from 'node:string_decoder'

export const MAX_LINE = 64 * 1024

export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8')
  private readonly emit: (line: string) => void
  private readonly cut: (text: string, at: number) => number
  private pending = ''

  constructor(
    emit: (line: string) => void,
    cut: (text: string, at: number) => number = (_, at) => at,
  ) {
    this.emit = emit
    this.cut = cut
  }

  push(chunk: Buffer | string): void {
    this.pending += typeof chunk === 'string' ? chunk : this.decoder.write(chunk)
    let newline = this.pending.indexOf('\n')
    while (newline !== -1) {
      this.line(this.pending.slice(0, newline))
      this.pending = this.pending.slice(newline + 1)
      newline = this.pending.indexOf('\n')
    }
    while (this.pending.length > MAX_LINE) {
      const at = this.cut(this.pending, MAX_LINE)
      if (at >= this.pending.length) break
      this.line(this.pending.slice(0, at))
      this.pending = this.pending.slice(at)
    }
  }

  /** Passes on what is left, after the stream ended. */
  end(): void {
    this.pending += this.decoder.end()
    if (this.pending !== '') this.line(this.pending)
    this.pending = ''
  }

  private line(text: string): void {
    this.emit(text.endsWith('\r') ? text.slice(0, -1) : text)
  }
}
