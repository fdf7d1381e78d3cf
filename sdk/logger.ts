import { pino, type Logger } from 'pino'
import { envLogLevel } from './config.ts'

export type { Logger }

/**
 * A structured JSON logger on stderr, named by component path
 * (`mesh:agent:ssh`). Child loggers carry ids as snake_case fields.
 * The level comes from CODER_MESH_LOG_LEVEL, else `fallbackLevel`.
 */
export function createLogger(name: string, fallbackLevel = 'info'): Logger {
  return pino(
    {
      name,
      level: envLogLevel() ?? fallbackLevel,
      // Secrets must never reach logs, whatever a caller passes in.
      redact: {
        paths: [
          'token',
          'password',
          'ticket',
          '*.token',
          '*.password',
          '*.ticket',
          'authorization',
        ],
        censor: '[redacted]',
      },
    },
    pino.destination({ fd: 2, sync: true }),
  )
}
