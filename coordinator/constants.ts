/** Defaults and limits of the coordinator, with their units. */
import { HOUR, MINUTE, SECOND } from '../sdk/config.ts'

/** The store's layout version, kept in the `meta` record. */
export const SCHEMA_VERSION = 2

/** How long a session token stays valid after login. */
export const SESSION_TTL = 24 * HOUR

/** How long a mesh ticket from /connect stays valid. */
export const TICKET_TTL = 1 * HOUR

/** How often agents register again, in seconds (sent to them). */
export const HEARTBEAT_SECONDS = 15

/** An agent counts as connected while it registered within this many ms. */
export const AGENT_CONNECTED_WINDOW = 3 * HEARTBEAT_SECONDS * SECOND

/** Builds that run at once across all workspaces. */
export const DEFAULT_MAX_CONCURRENT_BUILDS = 2

/** How long close() lets running builds finish before it cancels them, in ms. */
export const DEFAULT_BUILD_GRACE = 30 * SECOND

/** How long a canceled build may take to wind down before close() gives up on it, in ms. */
export const BUILD_CANCEL_GRACE = 15 * SECOND

/** Largest request body, in bytes, except template pushes. */
export const MAX_BODY_BYTES = 1024 * 1024

/** Largest template push body, in bytes (base64 inflates files by a third). */
export const MAX_TEMPLATE_BODY_BYTES = 16 * 1024 * 1024

/** Largest total size of a template version's decoded files, in bytes. */
export const MAX_TEMPLATE_FILES_BYTES = 10 * 1024 * 1024

/** Most reservations the relay holds at once. */
export const MAX_RELAY_RESERVATIONS = 10_000

/**
 * Where the coordinator's libp2p node listens unless told otherwise: TCP
 * for agents and the CLI, WebSockets for browsers. Plain /ws: a page served
 * over https may only open wss, which needs TLS in front (a proxy); the
 * relay does not terminate TLS itself.
 */
export const DEFAULT_P2P_LISTEN = ['/ip4/0.0.0.0/tcp/0', '/ip4/0.0.0.0/tcp/0/ws']

/**
 * Where the coordinator's STUN responder (UDP) listens unless told
 * otherwise: every address, a free port (like the relay's TCP port), so
 * several coordinators on one host do not collide. Agents and clients learn
 * the port from the register and connect answers. Behind a firewall, pin it
 * (`--stun-address 0.0.0.0:3478`) and open that UDP port.
 */
export const DEFAULT_STUN_ADDRESS = '0.0.0.0:0'

/** Where `coder-mesh server` listens unless told otherwise. */
export const DEFAULT_ADDRESS = '127.0.0.1:7080'

/** Expired relay grants are swept this often, in ms. */
export const GRANT_SWEEP_INTERVAL = 5 * MINUTE

/** Login attempts one client address may make at once before it is throttled. */
export const DEFAULT_LOGIN_ADDRESS_BURST = 30

/** Login attempts one client address regains per minute. */
export const DEFAULT_LOGIN_ADDRESS_PER_MINUTE = 30

/** Login attempts for one user (or unknown login name) at once before it is throttled. */
export const DEFAULT_LOGIN_USER_BURST = 20

/** Login attempts one user regains per minute. */
export const DEFAULT_LOGIN_USER_PER_MINUTE = 10

/** Wrong passwords in a row that lock a login. */
export const DEFAULT_LOGIN_LOCK_AFTER = 10

/** How long a locked login stays locked, in ms. */
export const DEFAULT_LOGIN_LOCK_DURATION = 15 * MINUTE

/** Most keys (addresses, logins) a rate limiter tracks; the oldest are dropped first. */
export const RATE_LIMITER_MAX_KEYS = 10_000

/** An API token's last-used time is written at most this often, in ms. */
export const TOKEN_TOUCH_INTERVAL = 1 * MINUTE

/** Names that cannot be usernames: they are routes under /api/v1/users. */
export const RESERVED_USERNAMES: readonly string[] = ['me', 'first', 'login', 'logout']
