/**
 * Test doubles for the agent's tests: a minimal coordinator (a real HTTP
 * server answering POST /api/v1/agent/register with a real ticket key) and
 * a mesh SSH client (a real libp2p node dialing the agent with a ticket,
 * running an ssh2 Client on the stream).
 */
import { readdirSync, readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import ssh2, { type ClientChannel, type PseudoTtyOptions } from 'ssh2'
import { SSH_PROTOCOL } from '../netstack/constants.ts'
import { dialAgent, openMeshStream } from '../netstack/dial.ts'
import { newPeerKey } from '../netstack/keys.ts'
import { createMeshNode, type MeshNode } from '../netstack/node.ts'
import {
  exportTicketPublicKey,
  newTicketKeyPair,
  signTicket,
  type TicketKeyPair,
} from '../netstack/ticket.ts'
import { AgentRegisterRequest, type AgentRegisterResponse } from '../sdk/api-types.ts'

export interface FakeCoordinatorInit {
  /** The agent token it accepts; default "agent-token". */
  token?: string
  relays?: string[]
  heartbeatSeconds?: number
  /** Port to listen on (127.0.0.1); default any free port. */
  port?: number
}

export interface FakeCoordinator {
  url: string
  port: number
  token: string
  keys: TicketKeyPair
  /** Relays it hands out; tests may change it. */
  relays: string[]
  heartbeatSeconds: number
  workspaceId: string
  /** Every accepted registration, oldest first. */
  registrations: AgentRegisterRequest[]
  /** Resolves with the first registration after the `count` already seen that matches. */
  waitForRegistration(
    count: number,
    match?: (r: AgentRegisterRequest) => boolean,
  ): Promise<AgentRegisterRequest>
  /** Signs a ticket for `client` to reach `agent`, valid for a minute. */
  ticket(client: string, agent: string, keys?: TicketKeyPair): string
  close(): Promise<void>
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

export async function startFakeCoordinator(
  init: FakeCoordinatorInit = {},
): Promise<FakeCoordinator> {
  const keys = newTicketKeyPair()
  const waiters: (() => void)[] = []
  const coordinator: FakeCoordinator = {
    url: '',
    port: 0,
    token: init.token ?? 'agent-token',
    keys,
    relays: init.relays ?? [],
    heartbeatSeconds: init.heartbeatSeconds ?? 30,
    workspaceId: 'ws-test',
    registrations: [],
    waitForRegistration(count, match = () => true) {
      return new Promise((resolve) => {
        const check = (): boolean => {
          const found = coordinator.registrations.slice(count).find(match)
          if (found !== undefined) resolve(found)
          return found !== undefined
        }
        if (check()) return
        const waiter = (): void => {
          if (check()) waiters.splice(waiters.indexOf(waiter), 1)
        }
        waiters.push(waiter)
      })
    },
    ticket(client, agent, signWith = keys) {
      const claims = { v: 1 as const, client, agent, workspace: 'ws-test', user: 'alice' }
      return signTicket({ ...claims, exp: Date.now() + 60_000 }, signWith.privateKey)
    },
    close() {
      return new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
    },
  }

  const server = createServer((req, res) => {
    void (async () => {
      if (req.method !== 'POST' || req.url !== '/api/v1/agent/register') {
        sendJson(res, 404, { code: 'MESH_NOT_FOUND', message: 'No such route.' })
        return
      }
      if (req.headers.authorization !== `Bearer ${coordinator.token}`) {
        sendJson(res, 401, { code: 'MESH_UNAUTHENTICATED', message: 'Unknown agent token.' })
        return
      }
      const parsed = AgentRegisterRequest.safeParse(JSON.parse(await readBody(req)))
      if (!parsed.success) {
        sendJson(res, 400, { code: 'MESH_VALIDATION', message: parsed.error.message })
        return
      }
      coordinator.registrations.push(parsed.data)
      for (const waiter of [...waiters]) waiter()
      const body: AgentRegisterResponse = {
        workspaceId: coordinator.workspaceId,
        workspaceName: 'dev',
        owner: 'alice',
        ticketPublicKey: exportTicketPublicKey(keys.publicKey),
        relays: coordinator.relays,
        heartbeatSeconds: coordinator.heartbeatSeconds,
      }
      sendJson(res, 200, body)
    })().catch((err: unknown) =>
      sendJson(res, 500, { code: 'MESH_INTERNAL', message: String(err) }),
    )
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(init.port ?? 0, '127.0.0.1', () => resolve())
  })
  coordinator.port = (server.address() as AddressInfo).port
  coordinator.url = `http://127.0.0.1:${coordinator.port}`
  return coordinator
}

export interface MeshSshClient {
  node: MeshNode
  ssh: ssh2.Client
  /** The host key the agent presented. */
  hostKey: Buffer
  close(): Promise<void>
}

export interface ConnectSshInit {
  coordinator: FakeCoordinator
  agentPeerId: string
  addrs: string[]
  relays?: string[]
  /** Sign the ticket with other keys (a forged ticket). */
  keys?: TicketKeyPair
}

/** Opens a ticketed SSH stream to the agent and an ssh2 Client on it. */
export async function openSshStream(
  init: ConnectSshInit,
): Promise<{ node: MeshNode; duplex: Duplex }> {
  const node = await createMeshNode({ privateKey: await newPeerKey(), listen: [] })
  try {
    const target = { peerId: init.agentPeerId, addrs: init.addrs, relays: init.relays ?? [] }
    const connection = await dialAgent(node, target, { timeout: 15_000 })
    const ticket = init.coordinator.ticket(node.peerId.toString(), init.agentPeerId, init.keys)
    const duplex = await openMeshStream(connection, SSH_PROTOCOL, ticket)
    return { node, duplex }
  } catch (err) {
    await node.stop()
    throw err
  }
}

export async function connectSsh(init: ConnectSshInit): Promise<MeshSshClient> {
  const { node, duplex } = await openSshStream(init)
  const ssh = new ssh2.Client()
  let hostKey: Buffer = Buffer.alloc(0)
  try {
    await new Promise<void>((resolve, reject) => {
      ssh.once('ready', resolve)
      ssh.once('error', reject)
      ssh.connect({
        sock: duplex,
        username: 'u',
        readyTimeout: 15_000,
        hostVerifier: (key: Buffer) => {
          hostKey = key
          return true
        },
      })
    })
  } catch (err) {
    await node.stop()
    throw err
  }
  ssh.on('error', () => undefined)
  return {
    node,
    ssh,
    hostKey,
    async close() {
      ssh.end()
      await node.stop()
    },
  }
}

export interface RunOptions {
  /** Written to the command's stdin, then EOF; default: EOF at once. */
  stdin?: string | Buffer
  /** Keep stdin open (no EOF). */
  keepStdinOpen?: boolean
  pty?: boolean | PseudoTtyOptions
  env?: Record<string, string>
  /** Called with the channel once the command runs. */
  onChannel?: (channel: ClientChannel) => void
}

export interface RunResult {
  stdout: Buffer
  stderr: Buffer
  code: number | null
  signal: string | undefined
  /** Bytes of stdout and stderr received when exit-status arrived. */
  stdoutAtExit: number
  stderrAtExit: number
  /** True when the exit status came before the channel closed. */
  exitBeforeClose: boolean
}

/** Runs `command` in a new session channel and collects everything it sends. */
export function run(
  ssh: ssh2.Client,
  command: string,
  options: RunOptions = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    ssh.exec(command, { pty: options.pty, env: options.env }, (err, channel) => {
      if (err !== undefined) {
        reject(err)
        return
      }
      collect(channel, options, resolve)
    })
  })
}

/** Starts a shell (with a PTY when `pty` is given) and collects its output. */
export function shell(
  ssh: ssh2.Client,
  pty: PseudoTtyOptions | false,
  options: RunOptions = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const cb = (err: Error | undefined, channel: ClientChannel): void => {
      if (err !== undefined) {
        reject(err)
        return
      }
      collect(channel, { keepStdinOpen: true, ...options }, resolve)
    }
    if (pty === false) ssh.shell(false, cb)
    else ssh.shell(pty, cb)
  })
}

function collect(
  channel: ClientChannel,
  options: RunOptions,
  resolve: (result: RunResult) => void,
): void {
  const out: Buffer[] = []
  const err: Buffer[] = []
  let outBytes = 0
  let errBytes = 0
  const result: RunResult = {
    stdout: Buffer.alloc(0),
    stderr: Buffer.alloc(0),
    code: null,
    signal: undefined,
    stdoutAtExit: -1,
    stderrAtExit: -1,
    exitBeforeClose: false,
  }
  channel.on('data', (chunk: Buffer) => {
    out.push(chunk)
    outBytes += chunk.length
  })
  channel.stderr.on('data', (chunk: Buffer) => {
    err.push(chunk)
    errBytes += chunk.length
  })
  channel.on('exit', (code: number | null, signal?: string) => {
    result.code = code
    result.signal = signal
    result.stdoutAtExit = outBytes
    result.stderrAtExit = errBytes
    result.exitBeforeClose = true
  })
  // Done when the channel closed and both streams delivered all they buffered.
  let pending = 3
  const done = (): void => {
    if (--pending > 0) return
    result.stdout = Buffer.concat(out)
    result.stderr = Buffer.concat(err)
    resolve(result)
  }
  channel.once('end', done)
  channel.stderr.once('end', done)
  channel.once('close', done)
  options.onChannel?.(channel)
  if (options.stdin !== undefined) channel.end(options.stdin)
  else if (options.keepStdinOpen !== true) channel.end()
}

/** Pids of processes whose command line contains (or, `exact`, is) `text` (Linux /proc). */
export function processesMatching(text: string, exact = false): number[] {
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      const matches = exact ? cmdline === text : cmdline.includes(text)
      if (matches && state !== 'Z') pids.push(Number(name))
    } catch {
      // Gone while we looked.
    }
  }
  return pids
}

/** Polls `check` every 100 ms until it returns true or `timeoutMs` passes. */
export async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (check()) return true
    if (Date.now() >= deadline) return false
    await new Promise((r) => setTimeout(r, 100))
  }
}
