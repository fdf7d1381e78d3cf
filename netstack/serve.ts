/**
 * Serves a mesh protocol behind a ticket check. Every stream must open with
 * a ticket frame naming this agent and bound to the remote peer's
 * Noise-authenticated identity; anything else is aborted before the handler
 * sees a byte. The check is by identity only, never by address or
 * connection direction, so relayed, direct and hole-punched connections are
 * treated alike.
 */
import type { Connection } from '@libp2p/interface'
import type { KeyObject } from 'node:crypto'
import type { Duplex } from 'node:stream'
import type { Logger } from '../sdk/logger.ts'
import { MAX_STREAMS_PER_PROTOCOL } from './constants.ts'
import { readTicketFrame } from './frames.ts'
import type { MeshNode } from './node.ts'
import { toDuplex } from './stream-duplex.ts'
import { verifyTicket, type TicketClaims } from './ticket.ts'

/** How long a new stream may take to present its ticket, in ms. */
export const DEFAULT_TICKET_TIMEOUT = 10_000

export interface TicketAuthority {
  /** The coordinator's ticket key; undefined until the agent has registered. */
  publicKey(): KeyObject | undefined
  /** This agent's own peer id. */
  agentPeerId: string
  /** Tickets revoked since issue, by signature; optional. */
  isRevoked?(claims: TicketClaims): boolean
}

export interface MeshStreamContext {
  claims: TicketClaims
  connection: Connection
  log: Logger
}

export type MeshStreamHandler = (duplex: Duplex, context: MeshStreamContext) => void | Promise<void>

export async function serveMeshProtocol(
  node: MeshNode,
  protocol: string,
  authority: TicketAuthority,
  handler: MeshStreamHandler,
  log: Logger,
): Promise<void> {
  await node.handle(
    protocol,
    async (stream, connection) => {
      const remote = connection.remotePeer.toString()
      const streamLog = log.child({ protocol, peer_id: remote })
      const duplex = toDuplex(stream)
      // A peer that resets its stream must not crash the agent with an
      // unhandled 'error': handlers see failures through their own reads
      // and writes, or listen for them.
      duplex.on('error', (err: Error) => streamLog.debug({ err: err.message }, 'stream error'))

      let claims: TicketClaims
      try {
        const timer = setTimeout(
          () => duplex.destroy(new Error('no ticket in time')),
          DEFAULT_TICKET_TIMEOUT,
        )
        const ticket = await readTicketFrame(duplex).finally(() => clearTimeout(timer))
        const key = authority.publicKey()
        if (key === undefined) throw new Error('agent has no ticket key yet')
        claims = verifyTicket(ticket, key, { agent: authority.agentPeerId, client: remote })
        if (authority.isRevoked?.(claims) === true) throw new Error('ticket revoked')
      } catch (err) {
        streamLog.warn({ err: (err as Error).message }, 'stream refused')
        duplex.destroy()
        stream.abort(err as Error)
        return
      }

      streamLog.debug({ user: claims.user }, 'stream accepted')
      try {
        await handler(duplex, { claims, connection, log: streamLog })
      } catch (err) {
        streamLog.error({ err }, 'stream handler failed')
        duplex.destroy(err as Error)
      }
    },
    { maxInboundStreams: MAX_STREAMS_PER_PROTOCOL, runOnLimitedConnection: true },
  )
}
