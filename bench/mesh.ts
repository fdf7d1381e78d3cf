/**
 * The coder-mesh side of the bench, every party its own process as in use:
 * a real `coder-mesh server` (coordinator and relay) on loopback with a
 * fresh data dir, workspaces built by real Terraform from the shipped
 * `local` template (each with a real agent process), and the CLI.
 *
 * The template is `local` with one addition, an `ice_servers` parameter
 * handed to the agent as CODER_MESH_ICE_SERVERS, so one workspace can run
 * with WebRTC on; the others run the agent exactly as `local` does.
 */
import { execa, type ResultPromise } from 'execa'
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import {
  BIN,
  cleanEnv,
  localWorkspaceDir,
  loginOwner,
  processesUnder,
  removeTree,
  ROOT,
  savedSession,
  startTestServer,
  type TestServer,
} from '../test/harness.ts'

export const TEMPLATE = 'bench'

export interface Forward {
  port: number
  child: ResultPromise
}

export interface Mesh {
  server: TestServer
  /** The CLI's environment (its HOME, config dir and saved login). */
  env: Record<string, string>
  /** The session token the CLI saved. */
  token: string
  createWorkspace(name: string, iceServers?: string): Promise<void>
  /** Pid of the agent of `name`, the only process with its agent dir. */
  agentPid(name: string): Promise<number | undefined>
  /** `coder-mesh port-forward NAME --tcp 0:REMOTE --path PATH`. */
  forward(name: string, remote: number, path: 'direct' | 'relay'): Promise<Forward>
  /** `coder-mesh connect --socks 127.0.0.1:0`, running once it listens; stop() ends it. */
  connect(): Promise<{ stop(): Promise<void> }>
  /** bench/webrtc-forward.ts: the same forward over an upgraded WebRTC connection. */
  webrtcForward(name: string, remote: number, iceServers: string): Promise<Forward>
  stop(): Promise<void>
}

const ICE_VARIABLE = `
variable "ice_servers" {
  type        = string
  default     = ""
  description = "CODER_MESH_ICE_SERVERS for the agent (the bench's WebRTC path)."
}
`
const TOKEN_LINE = 'CODER_MESH_AGENT_TOKEN   = var.coder_mesh_agent_token\n'

/** The `local` template plus the ice_servers parameter, written into `dir`. */
async function writeBenchTemplate(dir: string): Promise<void> {
  const local = join(ROOT, 'examples', 'templates', 'local')
  await mkdir(dir, { recursive: true })
  await copyFile(join(local, 'agent.sh'), join(dir, 'agent.sh'))
  const main = await readFile(join(local, 'main.tf'), 'utf8')
  if (!main.includes(TOKEN_LINE)) {
    throw new Error('examples/templates/local/main.tf changed: the bench template needs updating')
  }
  const withIce = main.replace(
    TOKEN_LINE,
    `${TOKEN_LINE}      CODER_MESH_ICE_SERVERS   = var.ice_servers\n`,
  )
  await writeFile(join(dir, 'main.tf'), withIce + ICE_VARIABLE)
}

/**
 * The Node process at or under `pid`: agent.sh records the shell that runs
 * the agent command, and the agent itself is its child.
 */
async function nodeUnder(pid: number): Promise<number | undefined> {
  const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')
  if (comm.trim() === 'node') return pid
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')
  for (const child of children.split(' ').filter(Boolean)) {
    const found = await nodeUnder(Number(child))
    if (found !== undefined) return found
  }
  return undefined
}

/** Waits for `Forwarding 127.0.0.1:PORT` on the child's stdout. */
function forwardPort(child: ResultPromise, what: string): Promise<number> {
  let out = ''
  return new Promise<number>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = /^Forwarding 127\.0\.0\.1:(\d+)/m.exec(out)
      if (match?.[1] !== undefined) resolve(Number(match[1]))
    })
    child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`${what}: ${chunk}`))
    void child.then((r) => reject(new Error(`${what} exited ${r.exitCode}`)))
  })
}

export async function startMesh(): Promise<Mesh> {
  const server = await startTestServer()
  const children: ResultPromise[] = []
  const workspaces: string[] = []
  try {
    await loginOwner(server)
    const templateDir = join(dirname(server.dataDir), 'bench-template')
    await writeBenchTemplate(templateDir)
    const pushed = await server.cli(['templates', 'push', TEMPLATE, '-d', templateDir])
    if (pushed.exitCode !== 0) throw new Error(`templates push: ${pushed.stderr}`)
  } catch (err) {
    await server.stop()
    throw err
  }
  const env = cleanEnv(server.home, server.configDir)
  const { sessionToken } = await savedSession(server.configDir)

  const spawnForward = async (file: string, args: string[], extra = {}): Promise<Forward> => {
    const child = execa(file, args, {
      env: { ...env, ...extra },
      extendEnv: false,
      reject: false,
      buffer: false,
    })
    children.push(child)
    return { port: await forwardPort(child, args.join(' ')), child }
  }

  return {
    server,
    env,
    token: sessionToken,
    async createWorkspace(name, iceServers = '') {
      const args = ['create', name, '--template', TEMPLATE, '-y']
      if (iceServers !== '') args.push('--parameter', `ice_servers=${iceServers}`)
      const r = await server.cli(args)
      if (r.exitCode !== 0) throw new Error(`create ${name}: ${r.stderr}`)
      workspaces.push(name)
    },
    async agentPid(name) {
      const r = await server.cli(['show', name, '-o', 'json'])
      const id = (JSON.parse(r.stdout) as { id?: string }).id
      if (id === undefined) return undefined
      // agent.sh keeps the agent's pid there (examples/templates/local).
      const text = await readFile(join(localWorkspaceDir(server, id), 'agent.pid'), 'utf8')
      const leader = Number(text.trim())
      return Number.isInteger(leader) && leader > 0 ? nodeUnder(leader) : undefined
    },
    forward(name, remote, path) {
      return spawnForward(BIN, ['port-forward', name, '--tcp', `0:${remote}`, '--path', path])
    },
    async connect() {
      const child = execa(BIN, ['connect', '--socks', '127.0.0.1:0'], {
        env,
        extendEnv: false,
        reject: false,
        buffer: false,
      })
      await new Promise<void>((resolve, reject) => {
        child.stdout?.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('SOCKS5 proxy on ')) resolve()
        })
        child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`connect: ${chunk}`))
        void child.then((r) => reject(new Error(`connect exited ${r.exitCode}`)))
      })
      return {
        async stop() {
          child.kill('SIGINT')
          await child
        },
      }
    },
    webrtcForward(name, remote, iceServers) {
      const script = join(ROOT, 'bench', 'webrtc-forward.ts')
      return spawnForward(
        process.execPath,
        ['--disable-warning=ExperimentalWarning', script, name, String(remote)],
        { CODER_MESH_ICE_SERVERS: iceServers, BENCH_URL: server.url, BENCH_TOKEN: sessionToken },
      )
    },
    async stop() {
      for (const child of children) child.kill('SIGINT')
      await Promise.all(children)
      for (const name of workspaces) await server.cli(['delete', name, '-y'])
      await server.stop()
      for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
      await removeTree(dirname(server.dataDir))
    },
  }
}
