/**
 * Registering with the coordinator: the agent's peer id and addresses go
 * up; the ticket key, relays and heartbeat period come back. A coordinator
 * that cannot be reached (or answers with a server error) is retried with
 * exponential backoff; an unauthenticated answer is final.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { ApiClient } from '../sdk/api-client.ts'
import type { AgentRegisterRequest, AgentRegisterResponse } from '../sdk/api-types.ts'
import { isMeshError } from '../sdk/errors.ts'
import type { Logger } from '../sdk/logger.ts'
import { packageVersion } from '../sdk/paths.ts'

export const BACKOFF_INITIAL_MS = 1000
export const BACKOFF_MAX_MS = 30_000

/** The package version, sent with every registration. */
export const AGENT_VERSION: string = packageVersion()

/** Delay before retry number `attempt` (0-based): 1 s doubling to 30 s, ±20% jitter. */
export function backoffDelay(attempt: number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** Math.min(attempt, 16))
  return Math.round(base * (0.8 + Math.random() * 0.4))
}

/** Answers that retrying cannot fix: the token is wrong or revoked. */
export function isFatalRegisterError(err: unknown): boolean {
  return (
    isMeshError(err) && (err.code === 'MESH_UNAUTHENTICATED' || err.code === 'MESH_BAD_CREDENTIALS')
  )
}

/** One line saying why a registration failed (never the token). */
export function describeRegisterError(err: unknown): string {
  if (isMeshError(err))
    return err.detail === undefined ? err.message : `${err.message} (${err.detail})`
  return err instanceof Error ? err.message : String(err)
}

/**
 * Registers, retrying until it succeeds. Throws the coordinator's error when
 * it is fatal, or the abort reason when `signal` fires.
 */
export async function registerUntilDone(
  api: ApiClient,
  body: AgentRegisterRequest,
  log: Logger,
  signal: AbortSignal,
): Promise<AgentRegisterResponse> {
  for (let attempt = 0; ; attempt++) {
    signal.throwIfAborted()
    try {
      return await api.registerAgent(body, { signal })
    } catch (err) {
      if (signal.aborted) throw signal.reason
      if (isFatalRegisterError(err)) throw err
      const delay = backoffDelay(attempt)
      log.warn(
        { err: describeRegisterError(err), retry_in_ms: delay, attempt: attempt + 1 },
        'could not register with the coordinator; retrying',
      )
      await sleep(delay, undefined, { signal })
    }
  }
}
