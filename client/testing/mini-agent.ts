/**
 * A minimal workspace agent for the CLI's own tests: a libp2p node serving
 * the ticketed SSH protocol with an ssh2 server that runs `sh -c` for exec
 * and `sh` (on a real PTY when asked) for shells. The real agent lives in
 * agent/ and is tested end to end in test/.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import pty from '@lydell/node-pty'
import { spawn } from 'node:child_process'
import ssh2 from 'ssh2'
import { SSH_PROTOCOL } from '../../netstack/constants.ts'
import { createMeshNode, type MeshNode } from '../../netstack/node.ts'
import { serveMeshProtocol } from '../../netstack/serve.ts'
import { newTicketKeyPair, signTicket, type TicketKeyPair } from '../../netstack/ticket.ts'
import type { ConnectResponse } from '../../sdk/api-types.ts'
import { createLogger } from '../../sdk/logger.ts'

export interface MiniAgent {
  node: MeshNode
  keys: TicketKeyPair
  /** A connect answer for `clientPeerId`, as the coordinator would give. */
  connectResponse(clientPeerId: string, workspace: string): ConnectResponse
  stop(): Promise<void>
}

export async function startMiniAgent(): Promise<MiniAgent> {
  const keys = newTicketKeyPair()
  const node = await createMeshNode({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  const hostKey = ssh2.utils.generateKeyPairSync('ed25519').private
  const server = new ssh2.Server({ hostKeys: [hostKey] }, (client) => {
    client.on('error', () => undefined)
    client.on('authentication', (ctx) => ctx.accept())
    client.on('ready', () => client.on('session', (accept) => serveSession(accept())))
  })

  await serveMeshProtocol(
    node,
    SSH_PROTOCOL,
    { agentPeerId: node.peerId.toString(), publicKey: () => keys.publicKey },
    (duplex) => {
      server.injectSocket(duplex as never)
    },
    createLogger('mesh:test-agent', 'silent'),
  )

  return {
    node,
    keys,
    connectResponse(clientPeerId, workspace) {
      const agent = node.peerId.toString()
      const exp = Date.now() + 60_000
      const claims = { v: 1 as const, client: clientPeerId, agent, workspace, user: 'admin', exp }
      return {
        workspaceId: workspace,
        agent: {
          peerId: agent,
          addrs: node.getMultiaddrs().map((a) => a.decapsulate('/p2p').toString()),
        },
        relays: [],
        ticket: signTicket(claims, keys.privateKey),
        expiresAt: new Date(exp).toISOString(),
      }
    },
    stop: () => Promise.resolve(node.stop()),
  }
}

interface SessionState {
  window?: ssh2.PseudoTtyInfo
  resize?: (cols: number, rows: number) => void
}

function serveSession(session: ssh2.Session): void {
  const state: SessionState = {}
  session.on('pty', (accept, _reject, info) => {
    state.window = info
    accept?.()
  })
  session.on('window-change', (accept, _reject, info) => {
    state.resize?.(info.cols, info.rows)
    accept?.()
  })
  session.on('env', (accept) => accept?.())
  session.on('exec', (accept, _reject, info) => run(accept(), info.command, state))
  session.on('shell', (accept) => run(accept(), undefined, state))
}

function run(channel: ssh2.ServerChannel, command: string | undefined, state: SessionState): void {
  const window = state.window
  const args = command === undefined ? [] : ['-c', command]
  if (window !== undefined) {
    const term = pty.spawn('/bin/sh', args, {
      cols: window.cols,
      rows: window.rows,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PS1: '$ ' },
    })
    state.resize = (cols, rows) => term.resize(cols, rows)
    term.onData((data) => channel.write(data))
    channel.on('data', (data: Buffer) => term.write(data.toString('utf8')))
    term.onExit(({ exitCode, signal }) => {
      if (signal !== undefined && signal !== 0) channel.exit('TERM')
      else channel.exit(exitCode)
      channel.end()
    })
    return
  }

  const child = spawn('/bin/sh', args, { stdio: ['pipe', 'pipe', 'pipe'] })
  channel.pipe(child.stdin)
  child.stdin.on('error', () => undefined)
  child.stdout.pipe(channel, { end: false })
  child.stderr.pipe(channel.stderr, { end: false })
  let pending = 2
  let exit: [number | null, NodeJS.Signals | null] = [0, null]
  const done = (): void => {
    if (--pending > 0) return
    const [code, signal] = exit
    if (signal !== null) channel.exit(signal.replace(/^SIG/, ''), false, '')
    else channel.exit(code ?? 0)
    channel.end()
  }
  child.stdout.on('end', done)
  child.on('exit', (code, signal) => {
    exit = [code, signal]
    if (child.stderr.readableEnded) done()
    else child.stderr.once('end', done)
  })
}
