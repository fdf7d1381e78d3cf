/**
 * Mesh tickets: a statement signed with the coordinator's Ed25519 key that
 * lets one client peer open streams to one agent until an expiry. Agents
 * verify them offline with the public key they got when they registered.
 *
 * Wire form: `<base64url(JSON payload)>.<base64url(signature)>`, the
 * signature taken over the ASCII of the first part.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto'
import { MeshError } from '../sdk/errors.ts'

export const TICKET_VERSION = 1

export interface TicketClaims {
  v: typeof TICKET_VERSION
  /** The client's peer id (the Noise-authenticated identity on the connection). */
  client: string
  /** The agent's peer id. */
  agent: string
  workspace: string
  /** The user the ticket was issued to. */
  user: string
  /** Expiry, milliseconds since the epoch. */
  exp: number
}

export interface TicketKeyPair {
  privateKey: KeyObject
  publicKey: KeyObject
}

export function newTicketKeyPair(): TicketKeyPair {
  return generateKeyPairSync('ed25519')
}

/** PKCS#8 DER, base64: how the coordinator stores its signing key. */
export function exportTicketPrivateKey(key: KeyObject): string {
  return key.export({ format: 'der', type: 'pkcs8' }).toString('base64')
}

export function importTicketPrivateKey(encoded: string): TicketKeyPair {
  const privateKey = createPrivateKey({
    key: Buffer.from(encoded, 'base64'),
    format: 'der',
    type: 'pkcs8',
  })
  return { privateKey, publicKey: createPublicKey(privateKey) }
}

/** SPKI DER, base64: how the public key travels to agents. */
export function exportTicketPublicKey(key: KeyObject): string {
  return key.export({ format: 'der', type: 'spki' }).toString('base64')
}

export function importTicketPublicKey(encoded: string): KeyObject {
  return createPublicKey({ key: Buffer.from(encoded, 'base64'), format: 'der', type: 'spki' })
}

export function signTicket(claims: TicketClaims, privateKey: KeyObject): string {
  const body = Buffer.from(JSON.stringify(claims)).toString('base64url')
  const signature = sign(null, Buffer.from(body), privateKey).toString('base64url')
  return `${body}.${signature}`
}

export interface VerifyTicketOptions {
  /** The agent checking the ticket: it must name this peer. */
  agent: string
  /** The peer presenting it: the ticket must be bound to this peer. */
  client: string
  /** Current time in ms; Date.now() unless a test sets a clock. */
  now?: number
}

/**
 * Checks signature, binding and expiry; returns the claims or throws
 * MESH_TICKET_INVALID saying which check failed.
 */
export function verifyTicket(
  ticket: string,
  publicKey: KeyObject,
  options: VerifyTicketOptions,
): TicketClaims {
  const [body, signature, extra] = ticket.split('.')
  if (body === undefined || signature === undefined || extra !== undefined) {
    throw invalid('malformed ticket')
  }
  if (!verify(null, Buffer.from(body), publicKey, Buffer.from(signature, 'base64url'))) {
    throw invalid('bad signature')
  }

  let claims: TicketClaims
  try {
    claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TicketClaims
  } catch {
    throw invalid('unreadable claims')
  }

  if (claims.v !== TICKET_VERSION) throw invalid(`unknown ticket version ${String(claims.v)}`)
  if (claims.agent !== options.agent) throw invalid('ticket is for another agent')
  if (claims.client !== options.client) throw invalid('ticket is bound to another peer')
  if (typeof claims.exp !== 'number' || claims.exp <= (options.now ?? Date.now())) {
    throw invalid('ticket expired')
  }
  return claims
}

function invalid(detail: string): MeshError {
  return new MeshError('MESH_TICKET_INVALID', `Mesh ticket refused: ${detail}.`, { detail })
}
