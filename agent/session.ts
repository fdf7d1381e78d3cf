/**
 * One SSH session channel: the `env`, `pty` and `window-change` requests
 * that prepare it, then `exec` or `shell` running the user's shell, on pipes
 * or on a real PTY.
 *
 * The contract with the client:
 * - stdin: channel data goes to the process; the client's EOF closes the
 *   process's stdin (B01). With a PTY, input goes to the terminal.
 * - output: stdout and stderr stay apart on pipes; on a PTY there is one
 *   stream. Backpressure is kept both ways.
 * - end: once both output pipes ended and the process exited, every byte is
 *   handed to SSH, then exit-status (or exit-signal for a death by signal:
 *   B02), then EOF and CLOSE (B04).
 * - hang-up: when the channel or connection goes away while the process
 *   runs, every process of the session gets SIGHUP, then SIGKILL after
 *   KILL_GRACE_MS.
 * - the `sftp` subsystem is served in process (sftp.ts); other subsystems
 *   are refused (ssh2 refuses whatever has no listener).
 * - `auth-agent-req` gives the process SSH_AUTH_SOCK (auth-agent.ts);
 *   `signal` requests reach the session's processes; X11 is refused, and a
 *   shell or command says why on stderr.
 * - an interactive login (a shell on a PTY) starts with /etc/motd, unless
 *   ~/.hushlogin exists, as sshd's PrintMotd.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import type { IPty } from '@lydell/node-pty'
import type {
  Connection,
  PseudoTtyInfo,
  ServerChannel,
  Session,
  SFTPWrapper,
  WindowChangeInfo,
} from 'ssh2'
import type { Logger } from '../sdk/logger.ts'
import { listenAuthAgent, type AgentSocket } from './auth-agent.ts'
import { ChannelOutput, type OutputTarget } from './channel-output.ts'
import {
  clampDimension,
  isAllowedClientEnv,
  sanitizeTerm,
  sessionEnvironment,
  sessionUser,
  signalName,
  signalNumber,
  signalSession,
  terminateSession,
} from './processes.ts'
import { serveSftp } from './sftp.ts'

export type PtyModule = typeof import('@lydell/node-pty')

/** Signal names an `exit-signal` may carry (RFC 4254 §6.10, as ssh2 accepts them). */
const SSH_SIGNALS = new Set([
  'ABRT',
  'ALRM',
  'FPE',
  'HUP',
  'ILL',
  'INT',
  'KILL',
  'PIPE',
  'QUIT',
  'SEGV',
  'TERM',
  'USR1',
  'USR2',
])

const DEFAULT_COLS = 80
const DEFAULT_ROWS = 24
/** The message of the day shown on interactive logins. */
const MOTD_FILE = '/etc/motd'
/** Longest message of the day shown, in bytes. */
const MOTD_MAX = 64 * 1024
const X11_REFUSED = 'coder-mesh: X11 forwarding is not supported; use a port forward instead.\n'

export interface SessionDeps {
  log: Logger
  /** The SSH connection the session belongs to (agent forwarding opens channels on it). */
  client: Connection
  /** node-pty, or undefined where it cannot load (then PTY requests are refused). */
  pty: PtyModule | undefined
}

interface PtyRequest {
  term: string
  cols: number
  rows: number
}

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | number | null | undefined
}

/** Sends exit-status or exit-signal for `status` on `channel`. */
export function sendExitStatus(channel: ServerChannel, status: ExitStatus): void {
  const name = signalName(status.signal)
  if (name === undefined) {
    channel.exit(status.code ?? 255)
  } else if (SSH_SIGNALS.has(name)) {
    channel.exit(name, false, '')
  } else {
    // A signal SSH has no name for (BUS, SYS, ...): the shell's convention.
    channel.exit(128 + (signalNumber(name) ?? 0))
  }
}

export class SshSession {
  private readonly log: Logger
  private readonly ptyModule: PtyModule | undefined
  private readonly client: Connection
  private agentSocket: Promise<AgentSocket | undefined> | undefined
  private x11Refused = false
  /** The process's stdout and stderr pipes, while it runs without a PTY. */
  private outputPipes: Readable[] = []
  private readonly clientEnv: Record<string, string> = {}
  private ptyRequest: PtyRequest | undefined
  private channel: ServerChannel | undefined
  private output: ChannelOutput | undefined
  private terminal: IPty | undefined
  /** Session id of the processes started (the first process's pid). */
  private sid: number | undefined
  /** True once the exit status went out: the session ended on its own. */
  private finished = false
  private termination: Promise<void> | undefined

  constructor(session: Session, deps: SessionDeps) {
    this.log = deps.log
    this.ptyModule = deps.pty
    this.client = deps.client

    session.on('env', (accept, reject, info) => {
      if (this.channel === undefined && isAllowedClientEnv(info.key, info.val)) {
        this.clientEnv[info.key] = info.val
        accept?.()
      } else {
        reject?.()
      }
    })
    session.on('pty', (accept, reject, info) => this.onPty(accept, reject, info))
    session.on('window-change', (accept, reject, info) => this.onWindowChange(accept, reject, info))
    session.on('exec', (accept, reject, info) => {
      this.start(accept, reject, info.command)
    })
    session.on('shell', (accept, reject) => {
      this.start(accept, reject, undefined)
    })
    session.on('sftp', (accept, reject) => this.startSftp(accept, reject))
    session.on('auth-agent', (accept, reject) => {
      if (this.channel !== undefined || this.agentSocket !== undefined) {
        reject?.()
        return
      }
      this.agentSocket = listenAuthAgent(this.client, this.log).catch((err: unknown) => {
        this.log.warn({ err }, 'could not make the forwarded agent socket')
        return undefined
      })
      accept?.()
    })
    session.on('x11', (_accept, reject) => {
      this.x11Refused = true
      reject?.()
    })
    session.on('signal', (accept, reject, info) => {
      const name = `SIG${info.name}` as NodeJS.Signals
      if (this.sid === undefined || this.finished || signalNumber(info.name) === undefined) {
        reject?.()
        return
      }
      signalSession(this.sid, name)
      accept?.()
    })
    // The client will read no more output (`ssh host yes | head -1`): as
    // sshd does, close our ends of the process's output pipes, so that its
    // next write fails (SIGPIPE) instead of it running on with nobody
    // reading. OpenSSH sends this only to servers it takes for OpenSSH (see
    // the ident in ssh.ts).
    session.on('eow', () => {
      for (const pipe of this.outputPipes) pipe.destroy()
    })
    session.on('close', () => void this.terminate())
  }

  /**
   * Ends the session: nothing more is written to the channel, and if its
   * process has not finished, every process of the session is hung up.
   */
  terminate(): Promise<void> {
    if (this.termination !== undefined) return this.termination
    this.output?.close()
    void this.agentSocket?.then((socket) => socket?.close())
    const sid = this.sid
    if (sid === undefined || this.finished) {
      this.termination = Promise.resolve()
    } else {
      this.log.debug({ sid }, 'hanging up the session processes')
      this.termination = terminateSession(sid).catch((err: unknown) => {
        this.log.warn({ err }, 'could not end the session processes')
      })
    }
    return this.termination
  }

  private onPty(
    accept: (() => void) | undefined,
    reject: (() => void) | undefined,
    info: PseudoTtyInfo,
  ): void {
    if (this.ptyModule === undefined || this.channel !== undefined) {
      reject?.()
      return
    }
    this.ptyRequest = {
      term: sanitizeTerm(info.term),
      cols: info.cols > 0 ? (clampDimension(info.cols) ?? DEFAULT_COLS) : DEFAULT_COLS,
      rows: info.rows > 0 ? (clampDimension(info.rows) ?? DEFAULT_ROWS) : DEFAULT_ROWS,
    }
    accept?.()
  }

  private onWindowChange(
    accept: (() => void) | undefined,
    reject: (() => void) | undefined,
    info: WindowChangeInfo,
  ): void {
    const cols = clampDimension(info.cols)
    const rows = clampDimension(info.rows)
    if (cols === undefined || rows === undefined || this.ptyRequest === undefined) {
      reject?.()
      return
    }
    this.ptyRequest.cols = cols
    this.ptyRequest.rows = rows
    try {
      this.terminal?.resize(cols, rows)
    } catch {
      // The terminal is already closed.
    }
    accept?.()
  }

  private start(
    accept: () => ServerChannel | undefined,
    reject: (() => void) | undefined,
    command: string | undefined,
  ): void {
    if (this.termination !== undefined) {
      reject?.()
      return
    }
    const channel = accept()
    if (channel === undefined) return
    this.channel = channel
    this.output = new ChannelOutput(channel)
    channel.on('error', (err: Error) => this.log.debug({ err: err.message }, 'channel error'))
    channel.on('close', () => void this.terminate())

    void this.run(command)
  }

  private async run(command: string | undefined): Promise<void> {
    const user = sessionUser()
    const pty = this.ptyRequest
    const args = command === undefined ? ['-l'] : ['-c', command]
    const env = sessionEnvironment({ user, clientEnv: this.clientEnv, term: pty?.term })
    const agentSocket = await this.agentSocket
    if (agentSocket !== undefined) env.SSH_AUTH_SOCK = agentSocket.path
    if (this.x11Refused) await this.output!.write('stderr', Buffer.from(X11_REFUSED))
    if (command === undefined && pty !== undefined) await this.showMotd(user.home)
    if (this.termination !== undefined) return
    this.log.debug(
      { kind: command === undefined ? 'shell' : 'exec', pty: pty !== undefined, shell: user.shell },
      'session started',
    )

    try {
      if (pty !== undefined && this.ptyModule !== undefined) {
        this.runOnPty(this.ptyModule, pty, user.shell, args, user.home, env)
      } else {
        this.runOnPipes(user.shell, args, user.home, env)
      }
    } catch (err) {
      void this.failToStart(user.shell, err)
    }
  }

  /** /etc/motd on the terminal, as sshd's PrintMotd, unless ~/.hushlogin exists. */
  private async showMotd(home: string): Promise<void> {
    let motd: Buffer
    try {
      if (existsSync(join(home, '.hushlogin'))) return
      motd = readFileSync(MOTD_FILE).subarray(0, MOTD_MAX)
    } catch {
      return
    }
    if (motd.length === 0) return
    // Written straight to the channel, past the terminal's LF -> CRLF.
    await this.output!.write('stdout', Buffer.from(motd.toString('utf8').replace(/\r?\n/g, '\r\n')))
  }

  private startSftp(accept: () => SFTPWrapper, reject: (() => void) | undefined): void {
    if (this.termination !== undefined || this.channel !== undefined) {
      reject?.()
      return
    }
    const sftp = accept()
    this.log.debug('sftp session started')
    serveSftp(sftp, { home: sessionUser().home, log: this.log })
  }

  private runOnPipes(file: string, args: string[], cwd: string, env: Record<string, string>): void {
    const channel = this.channel!
    const output = this.output!
    // detached: the child calls setsid(), so its pid names the whole session.
    const child = spawn(file, args, { cwd, env, stdio: 'pipe', detached: true })
    this.sid = child.pid
    this.outputPipes = [child.stdout, child.stderr]

    const exited = new Promise<ExitStatus>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }))
      child.once('error', (err) => {
        if (child.pid !== undefined) return
        // It never started: say why on stderr and exit as a shell would.
        child.stdout.destroy()
        child.stderr.destroy()
        void output.write('stderr', Buffer.from(`coder-mesh: cannot run ${file}: ${err.message}\n`))
        resolve({ code: 127, signal: null })
      })
    })

    // stdin: the client's data, and its EOF as the end of the child's stdin (B01).
    child.stdin.on('error', () => {
      // The child closed its stdin (EPIPE): drop further input.
      channel.unpipe(child.stdin)
      channel.resume()
    })
    channel.pipe(child.stdin)

    void Promise.all([
      exited,
      this.pump(child.stdout, 'stdout'),
      this.pump(child.stderr, 'stderr'),
    ]).then(([status]) => this.finish(status))
  }

  private async pump(readable: Readable, target: OutputTarget): Promise<void> {
    const output = this.output!
    try {
      for await (const chunk of readable) {
        if (!(await output.write(target, chunk as Buffer))) break
      }
    } catch {
      // The pipe broke (the process was killed, or never started): it ended.
    }
  }

  private runOnPty(
    ptyModule: PtyModule,
    pty: PtyRequest,
    file: string,
    args: string[],
    cwd: string,
    env: Record<string, string>,
  ): void {
    const channel = this.channel!
    const output = this.output!
    // node-pty makes the child a session leader with the terminal as its
    // controlling tty. encoding null: Buffers, so no UTF-8 is split.
    const terminal = ptyModule.spawn(file, args, {
      name: pty.term,
      cols: pty.cols,
      rows: pty.rows,
      cwd,
      env,
      encoding: null,
    })
    this.terminal = terminal
    this.sid = terminal.pid

    let exited = false
    terminal.onData((data) => {
      // Backpressure: read no more from the terminal until SSH took this.
      terminal.pause()
      void output.write('stdout', data as unknown as Buffer).then((open) => {
        if (open && !exited) terminal.resume()
      })
    })
    channel.on('data', (chunk: Buffer) => {
      if (!exited) terminal.write(chunk as unknown as string)
    })
    // node-pty reports the exit once the terminal's output is drained.
    terminal.onExit(({ exitCode, signal }) => {
      exited = true
      void this.finish({ code: exitCode, signal })
    })
  }

  private async failToStart(file: string, err: unknown): Promise<void> {
    const message = err instanceof Error ? err.message : String(err)
    this.log.warn({ err: message, shell: file }, 'could not start the session process')
    await this.output?.write(
      'stderr',
      Buffer.from(`coder-mesh: cannot run ${file}: ${message}\r\n`),
    )
    await this.finish({ code: 127, signal: null })
  }

  /** Exit status, then EOF and CLOSE, after every byte of output (B04). */
  private async finish(status: ExitStatus): Promise<void> {
    const channel = this.channel
    const output = this.output
    if (channel === undefined || output === undefined) return
    if (!(await output.flush()) || this.termination !== undefined || !channel.writable) return
    this.finished = true
    this.log.debug({ code: status.code, signal: status.signal }, 'session process ended')
    try {
      sendExitStatus(channel, status)
    } catch (err) {
      this.log.warn({ err }, 'could not send the exit status')
    }
    channel.end()
  }
}
