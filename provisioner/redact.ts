/**
 * Hides secret values in log lines. Besides the value itself, its
 * JSON/Go-quoted form is hidden too, since Terraform prints command lines and
 * values quoted ("Executing: [\"/bin/sh\" \"-c\" \"...\"]").
 */

export const REDACTED = '[redacted]'

export interface Redactor {
  redact(text: string): string
  /**
   * Where to cut `text` near `at` so that no secret is split in two: `at`
   * itself, or the end of a secret that straddles it.
   */
  safeCut(text: string, at: number): number
}

export function createRedactor(secrets: Iterable<string>): Redactor {
  const forms = new Set<string>()
  for (const secret of secrets) {
    if (secret === '') continue
    forms.add(secret)
    forms.add(JSON.stringify(secret).slice(1, -1))
  }
  // Longest first, so a secret that contains another is hidden whole.
  const ordered = [...forms].sort((a, b) => b.length - a.length)

  return {
    redact(text) {
      let out = text
      for (const form of ordered) {
        if (out.includes(form)) out = out.split(form).join(REDACTED)
      }
      return out
    },
    safeCut(text, at) {
      let cut = at
      let moved = true
      while (moved) {
        moved = false
        for (const form of ordered) {
          let start = text.indexOf(form, Math.max(0, cut - form.length + 1))
          while (start !== -1 && start < cut) {
            if (start + form.length > cut) {
              cut = start + form.length
              moved = true
            }
            start = text.indexOf(form, start + 1)
          }
        }
      }
      return cut
    },
  }
}
