/** Text from users that ends up on terminals: what is unsafe in it, and how to quote it. */

/**
 * Characters that must not appear in text a terminal will show, such as a
 * template's file paths and messages: C0 and C1 controls (newlines, escape
 * sequences that drive a terminal), Unicode's line and paragraph separators
 * and bidirectional controls (which make text display as something else,
 * such as U+202E), and halves of a surrogate pair without the other half
 * (no file name can hold them).
 */
export const UNSAFE_TEXT =
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/** The first unsafe character in `text`, as U+XXXX, or undefined. */
export function unsafeCharacter(text: string): string | undefined {
  const found = UNSAFE_TEXT.exec(text)?.[0]
  if (found === undefined) return undefined
  return `U+${found.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`
}

/** `text` quoted for a message, with every unsafe character escaped. */
export function quoteText(text: string): string {
  return JSON.stringify(text).replace(
    new RegExp(UNSAFE_TEXT.source, 'g'),
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )
}
