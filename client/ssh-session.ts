/**
 * `coder-mesh ssh`: SSH to a workspace agent over the mesh. Loaded only when
 * the command runs (it pulls in libp2p and ssh2).
 *
 * 1. Get a ticket and a connection to the agent (mesh-client.ts, shared
 *    with port-forward, ping and speedtest), open an SSH stream on it.
 * 2. `--stdio`: carry the raw SSH bytes on stdin/stdout for OpenSSH's
 *    ProxyCommand. Otherwise: run an ssh2 client over the stream.
 *
 * Exit status: the remote command's; 128+N when it died of signal N; 255
 * when the session was lost (workspace stopped, agent unreachable, `~.`),
 * as OpenSSH does; 141 when our stdout was closed early (like SIGPIPE).
 * Known shortcoming: a session that never started (no such workspace, no
 * ticket, no path to the agent) exits 1 with the error's code, where
 * OpenSSH exits 255 for any failure of its own.
 *
 * A session is supervised (field case B06): the workspace is polled every
 * WATCH_INTERVAL_MS and the session ends when it stops or is deleted; SSH
 * keepalives end it when the agent stops answering (KEEPALIVE_INTERVAL_MS ×
 * (KEEPALIVE_COUNT_MAX + 1), 40 s); the libp2p connection closing ends it
 * at once.
 */
import type { Connection } from '@libp2p/interface'
import { constants as osConstants, userInfo } from 'node:os'
import type { Duplex, Readable, Transform, Writable } from 'node:stream'
import type { Client, ClientChannel, PseudoTtyOptions } from 'ssh2'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import type { MeshNode } from '../netstack/node.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import type { WorkspaceStatus } from '../sdk/api-types.ts'
import { isMeshError } from '../sdk/errors.ts'
import { exitStatusCode, signalExitCode } from './args.ts'
import { ESCAPE_HELP, escapeFilter, type EscapeAction } from './escape.ts'
import { linkAnswers, openLinkedStream, sessionDigest } from './connect-link.ts'
import { connectFailed } from './errors.ts'

/** How often a session checks that its workspace is still running, in ms. */
export const WATCH_INTERVAL_MS = 10_000
export const KEEPALIVE_INTERVAL_MS = 10_000
export const KEEPALIVE_COUNT_MAX = 3

/** Exit status when the session is lost rather than ended by the remote side. */
export const SESSION_LOST = 255
const CONNECTION_LOST = 'agent unreachable: the connection was lost'
const CONNECT_GONE = 'coder-mesh connect stopped'
/** Exit status when our stdout was closed before the session ended. */
export const STDOUT_CLOSED = 128 + (osConstants.signals.SIGPIPE ?? 13)

export interface SshOptions {
  workspace: string
  /** The remote command; a shell when undefined. */
  command?: string
  /** Carry raw SSH on stdin/stdout (ProxyCommand). */
  stdio: boolean
  /** Ask for a PTY for a command too (`-t`). */
  tty: boolean
}

const ENDED_STATES: ReadonlySet<WorkspaceStatus> = new Set([
  'stopping',
  'stopped',
  'deleting',
  'deleted',
])

export async function runSsh(api: ApiClient, options: SshOptions): Promise<number> {
  // A running `coder-mesh connect` already holds a connection: use it.
  const linked = await openLinkedStream({
    url: api.url,
    session: sessionDigest(api.token),
    workspace: options.workspace,
    protocol: 'ssh',
  })
  if (linked !== undefined) return session(api, options, linked.socket)

  // Loaded only now: a command that found the link never loads libp2p.
  const { openWorkspaceMesh } = await import('./mesh-client.ts')
  const mesh = await openWorkspaceMesh(api, options.workspace)
  try {
    const { duplex, connection } = await mesh.openStream(SSH_PROTOCOL)
    return await session(api, options, duplex, { node: mesh.node, connection })
  } finally {
    await mesh.close()
  }
}

/** Runs the session on an SSH stream, supervised. */
async function session(
  api: ApiClient,
  options: SshOptions,
  duplex: Duplex,
  carrier?: Carrier,
): Promise<number> {
  const watch = supervise(api, options.workspace, duplex, carrier)
  try {
    return options.stdio ? await proxyStdio(duplex, watch) : await runClient(duplex, options, watch)
  } finally {
    watch.stop()
    duplex.destroy()
  }
}

// ---------------------------------------------------------------------------
// Supervision

interface Watch {
  /** Why the session was lost, once it was. */
  reason(): string | undefined
  /** Ends the session for `reason` (the first reason given wins). */
  lose(reason: string): void
  /** The reason to report for a session that ended without an exit status. */
  explain(fallback: string): Promise<string>
  /**
   * Why the stream ended, when nothing said: for a stream of this process,
   * its connection was lost; for one from `connect`, either connect's
   * connection to the agent was lost or connect itself went away.
   */
  connectionLost(): Promise<string>
  stop(): void
}

/**
 * The libp2p connection a session's stream is on, when this process holds
 * it; a stream from `connect` (connect-link.ts) is watched by `connect`,
 * which ends it when its connection is lost.
 */
interface Carrier {
  node: MeshNode
  connection: Connection
}

function supervise(api: ApiClient, name: string, duplex: Duplex, carrier?: Carrier): Watch {
  let lostReason: string | undefined
  let stopped = false
  const connectionLost = async (): Promise<string> => {
    if (carrier !== undefined) return CONNECTION_LOST
    return (await linkAnswers()) ? `${CONNECTION_LOST} (coder-mesh connect's)` : CONNECT_GONE
  }

  const lose = (reason: string): void => {
    if (lostReason !== undefined || stopped) return
    lostReason = reason
    duplex.destroy()
  }

  const check = async (): Promise<string | undefined> => {
    try {
      const workspace = await api.workspace(name, { signal: AbortSignal.timeout(5000) })
      return ENDED_STATES.has(workspace.status) ? workspaceEnded(name, workspace.status) : undefined
    } catch (err) {
      if (isMeshError(err) && err.code === 'MESH_WORKSPACE_NOT_FOUND') {
        return workspaceEnded(name, 'deleted')
      }
      // The coordinator being away does not end a session that already
      // holds its connection: the agent checked our ticket offline.
      return undefined
    }
  }

  const timer = setInterval(() => {
    void check().then((reason) => reason !== undefined && lose(reason))
  }, WATCH_INTERVAL_MS)
  timer.unref()

  const onClose = (evt: CustomEvent<Connection>): void => {
    if (evt.detail.id !== carrier?.connection.id) return
    void check().then((reason) => lose(reason ?? CONNECTION_LOST))
  }
  carrier?.node.addEventListener('connection:close', onClose)

  return {
    reason: () => lostReason,
    lose,
    async explain(fallback) {
      if (lostReason !== undefined) return lostReason
      return (await check()) ?? fallback
    },
    connectionLost,
    stop() {
      stopped = true
      clearInterval(timer)
      carrier?.node.removeEventListener('connection:close', onClose)
    },
  }
}

function workspaceEnded(name: string, status: WorkspaceStatus): string {
  switch (status) {
    case 'stopping':
      return `workspace ${name} is stopping`
    case 'deleting':
      return `workspace ${name} is being deleted`
    case 'deleted':
      return `workspace ${name} was deleted`
    default:
      return `workspace ${name} stopped`
  }
}

function reportLoss(reason: string, freshLine: boolean): void {
  process.stderr.write(`${freshLine ? '\r\n' : ''}error: Session ended: ${reason}.\n`)
}

// ---------------------------------------------------------------------------
// --stdio: OpenSSH ProxyCommand

/**
 * Raw bytes both ways, half-close kept: stdin's EOF ends our writable side
 * only, and the session ends when the agent ends its side. Nothing but the
 * agent's bytes is written to stdout.
 */
async function proxyStdio(duplex: Duplex, watch: Watch): Promise<number> {
  const stdin = process.stdin
  const stdout = process.stdout
  let stdoutClosed = false
  const onStdoutError = (): void => {
    stdoutClosed = true
    duplex.destroy()
  }
  stdout.on('error', onStdoutError)
  // Errors end the session below; the listener keeps late ones from being thrown.
  duplex.on('error', () => undefined)

  stdin.pipe(duplex)
  duplex.pipe(stdout, { end: false })

  const ended = await new Promise<boolean>((resolve) => {
    duplex.once('end', () => resolve(true))
    duplex.once('error', () => resolve(false))
    duplex.once('close', () => resolve(duplex.readableEnded))
  })
  stdin.unpipe(duplex)
  stdin.pause()
  duplex.unpipe(stdout)

  if (stdoutClosed) return STDOUT_CLOSED
  await flush(stdout)
  stdout.off('error', onStdoutError)
  // A linked stream ends the same way whether the agent ended it or
  // connect went away: only the link tells them apart.
  const lost = await watch.connectionLost()
  if (ended && watch.reason() === undefined && lost !== CONNECT_GONE) return 0
  reportLoss(await watch.explain(lost), false)
  return SESSION_LOST
}

// ---------------------------------------------------------------------------
// ssh2 client

async function runClient(duplex: Duplex, options: SshOptions, watch: Watch): Promise<number> {
  const ssh2 = await import('ssh2')
  const client = new ssh2.Client()
  let clientError: Error | undefined
  client.on('error', (err: Error) => {
    clientError ??= err
  })

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void =>
      reject(connectFailed('The SSH handshake with the workspace agent failed.', err))
    // A stream the agent closed (a ticket it no longer takes) ends without
    // an error; ssh2 would wait on it forever.
    const onGone = (): void => onError(new Error('the agent closed the stream'))
    client.once('error', onError)
    client.once('end', onGone)
    client.once('close', onGone)
    client.once('ready', () => {
      client.off('error', onError)
      client.off('end', onGone)
      client.off('close', onGone)
      resolve()
    })
    client.connect({
      sock: duplex,
      username: localUsername(),
      // No host key check and no user authentication here: the peer was
      // already authenticated by libp2p Noise as the agent the coordinator
      // named, and the agent let us in on the coordinator's ticket, which is
      // bound to our own Noise identity. SSH only frames the session.
      hostVerifier: () => true,
      keepaliveInterval: KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      readyTimeout: 30_000,
    })
  })

  const stdin = process.stdin
  const interactive = options.command === undefined
  const pty = options.tty || (interactive && stdin.isTTY === true)
  const raw = pty && stdin.isTTY === true
  const size = terminalSize()
  const window: PseudoTtyOptions = {
    term: process.env.TERM ?? 'xterm-256color',
    cols: size.cols,
    rows: size.rows,
    width: 0,
    height: 0,
  }
  const env = localeEnvironment()

  // The exit status may arrive in the same read as the channel's opening
  // (a fast command), so its listener goes on inside the callback, before
  // any await lets ssh2 parse the next packet.
  let status: number | undefined
  const channel = await new Promise<ClientChannel>((resolve, reject) => {
    const done = (err: Error | undefined, ch: ClientChannel): void => {
      if (err !== undefined) {
        reject(err)
        return
      }
      ch.on('exit', (code: number | null, signal?: string) => {
        if (typeof code === 'number') status = exitStatusCode(code)
        else if (typeof signal === 'string') status = signalExitCode(signal)
      })
      ch.on('error', () => undefined)
      resolve(ch)
    }
    if (options.command !== undefined) {
      client.exec(options.command, pty ? { pty: window, env } : { env }, done)
    } else {
      client.shell(pty ? window : false, { env }, done)
    }
  })

  // Remote output, with backpressure: a slow local reader pauses the channel.
  const stdout = process.stdout
  let stdoutClosed = false
  const onStdoutError = (): void => {
    stdoutClosed = true
    client.end()
  }
  stdout.on('error', onStdoutError)
  channel.pipe(stdout, { end: false })
  channel.stderr.pipe(process.stderr, { end: false })

  // Local input. Its EOF ends the remote command's stdin (CHANNEL_EOF), so
  // `printf ... | coder-mesh ssh dev -- wc -l` finishes (field case B01).
  let escapeAction: EscapeAction | undefined
  let input: Readable = stdin
  let filter: Transform | undefined
  let restoreTty = (): void => undefined
  if (raw) {
    restoreTty = enterRawMode()
    filter = escapeFilter()
    filter.on('escape', (action: EscapeAction) => {
      if (action === 'help') {
        process.stderr.write(ESCAPE_HELP)
        return
      }
      escapeAction = action
      watch.lose(`connection to ${options.workspace} closed by the escape sequence`)
      client.end()
    })
    stdin.pipe(filter)
    input = filter
  }
  input.pipe(channel as Writable)

  const onResize = (): void => {
    const next = terminalSize()
    channel.setWindow(next.rows, next.cols, 0, 0)
  }
  const sizeSource = ttyOutput()
  if (pty) sizeSource?.on('resize', onResize)

  const onSignal = (signal: NodeJS.Signals): void => {
    restoreTty()
    process.exit(128 + (osConstants.signals[signal] ?? 1))
  }
  if (raw) {
    process.once('SIGTERM', onSignal)
    process.once('SIGHUP', onSignal)
  }

  try {
    await sessionEnd(client, channel)
  } finally {
    input.unpipe(channel as Writable)
    if (filter !== undefined) stdin.unpipe(filter)
    stdin.pause()
    restoreTty()
    sizeSource?.off('resize', onResize)
    process.off('SIGTERM', onSignal)
    process.off('SIGHUP', onSignal)
    channel.unpipe(stdout)
    channel.stderr.unpipe(process.stderr)
  }
  client.end()

  if (stdoutClosed) return STDOUT_CLOSED
  await flush(stdout)
  await flush(process.stderr)
  stdout.off('error', onStdoutError)

  if (status !== undefined && escapeAction === undefined) return status
  if (escapeAction === 'disconnect') {
    process.stderr.write(`\r\nConnection to ${options.workspace} closed.\n`)
    return SESSION_LOST
  }
  const fallback =
    clientError?.message === 'Keepalive timeout'
      ? `agent unreachable: no answer to keepalives for ${
          (KEEPALIVE_INTERVAL_MS * (KEEPALIVE_COUNT_MAX + 1)) / 1000
        } s`
      : await watch.connectionLost()
  reportLoss(await watch.explain(fallback), raw)
  return SESSION_LOST
}

/**
 * Resolves when the channel has closed and all its stdout and stderr bytes
 * have been handed on, or when the whole SSH connection is gone.
 */
async function sessionEnd(client: Client, channel: ClientChannel): Promise<void> {
  const closed = new Promise<void>((resolve) => channel.once('close', () => resolve()))
  const stderrEnded = new Promise<void>((resolve) => {
    if (channel.stderr.readableEnded) resolve()
    channel.stderr.once('end', () => resolve())
    channel.stderr.once('close', () => resolve())
  })
  // A half-open socket (connect's link) ends without closing: its end is
  // the connection's too, for SSH has no use for the half still open.
  const connectionGone = new Promise<void>((resolve) => {
    client.once('close', () => resolve())
    client.once('end', () => resolve())
  })
  await Promise.race([
    Promise.all([closed, stderrEnded]),
    // The channel normally closes with the connection; give its buffered
    // bytes a moment to drain before giving up on it.
    connectionGone.then(() => delay(1000)),
  ])
}

/** Puts the terminal in raw mode; returns the function that restores it (idempotent). */
function enterRawMode(): () => void {
  const stdin = process.stdin
  stdin.setRawMode(true)
  let restored = false
  const restore = (): void => {
    if (restored) return
    restored = true
    process.off('exit', restore)
    if (stdin.isTTY === true) stdin.setRawMode(false)
  }
  process.on('exit', restore)
  return restore
}

function ttyOutput(): NodeJS.WriteStream | undefined {
  if (process.stdout.isTTY === true) return process.stdout
  if (process.stderr.isTTY === true) return process.stderr
  return undefined
}

function terminalSize(): { cols: number; rows: number } {
  const tty = ttyOutput()
  return { cols: tty?.columns ?? 80, rows: tty?.rows ?? 24 }
}

/** The locale variables OpenSSH sends by default (SendEnv LANG LC_*). */
function localeEnvironment(): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && (key === 'LANG' || key.startsWith('LC_'))) env[key] = value
  }
  return env
}

function localUsername(): string {
  try {
    return userInfo().username
  } catch {
    return 'coder-mesh'
  }
}

/** Waits until everything written to `stream` has been handed to the OS. */
function flush(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.destroyed || stream.writableEnded) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => resolve()
    stream.once('error', done)
    stream.write('', () => {
      stream.off('error', done)
      resolve()
    })
  })
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
