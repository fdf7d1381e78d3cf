/**
 * The real coder-mesh processes placed in a topology's hosts: the server in
 * one namespace, CLI users in others, the agent (started by a template)
 * in yet another, and the small programs of peer.ts.
 */
import type { ResultPromise } from 'execa'
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BIN, OWNER, ROOT, serverUrl, type CliResult } from '../harness.ts'
import type { Host, Topology } from './topology.ts'

/** The Node 22 the package carries (the system's may be older). */
export const NODE = join(ROOT, 'node_modules', 'node', 'bin', 'node')
export const PEER_SCRIPT = join(ROOT, 'test', 'netns', 'peer.ts')

/** A clean environment for a process in a namespace; `ip` must be on PATH for the template. */
export function netnsEnv(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`,
    HOME: home,
    CODER_MESH_CONFIG_DIR: join(home, 'config'),
    CODER_MESH_LOG_LEVEL: process.env.CODER_MESH_LOG_LEVEL ?? 'warn',
    LANG: 'C.UTF-8',
    ...extra,
  }
}

export interface NetnsServer {
  url: string
  dataDir: string
  process: ResultPromise
  /** Kills the server (SIGKILL when `hard`) and starts it again on the same address and data. */
  restart(hard?: boolean): Promise<void>
  stop(): Promise<void>
}

async function spawnServer(
  topology: Topology,
  host: Host,
  address: string,
  dataDir: string,
  env: Record<string, string>,
): Promise<{ url: string; process: ResultPromise }> {
  const child = topology.spawn(host, BIN, ['server', '--address', address, '--data-dir', dataDir], {
    env,
    extendEnv: false,
    buffer: false,
    stdin: 'ignore',
  })
  return { url: await serverUrl(child), process: child }
}

/** Starts `coder-mesh server --address IP:PORT` inside `host`. */
export async function startServerIn(
  topology: Topology,
  host: Host,
  port: number,
  base: string,
): Promise<NetnsServer> {
  const dataDir = join(base, 'server-data')
  const env = netnsEnv(join(base, 'server-home'))
  const address = `${host.ip}:${port}`
  let { url, process: child } = await spawnServer(topology, host, address, dataDir, env)
  const server: NetnsServer = {
    url,
    dataDir,
    process: child,
    async restart(hard = false) {
      child.kill(hard ? 'SIGKILL' : 'SIGTERM')
      await child
      ;({ url, process: child } = await spawnServer(topology, host, address, dataDir, env))
      server.process = child
    },
    async stop() {
      child.kill('SIGTERM')
      await child
    },
  }
  return server
}

export interface NetnsUser {
  host: Host
  home: string
  env: Record<string, string>
  /** Runs the CLI in the user's namespace. */
  cli(
    args: string[],
    options?: { input?: string; timeout?: number; env?: Record<string, string> },
  ): Promise<CliResult>
  /** Starts the CLI and leaves it running. */
  spawnCli(args: string[], options?: { env?: Record<string, string> }): ResultPromise
  /** Runs peer.ts in the user's namespace and parses its JSON lines. */
  peer(
    args: string[],
    options?: { env?: Record<string, string>; timeout?: number },
  ): Promise<{ exitCode: number; events: PeerEvent[]; stderr: string }>
  login(url: string, first?: boolean): Promise<void>
}

export interface PeerEvent {
  event: string
  [field: string]: unknown
}

export async function userIn(
  topology: Topology,
  host: Host,
  base: string,
  extraEnv: Record<string, string> = {},
): Promise<NetnsUser> {
  const home = join(base, `home-${host.name}`)
  await mkdir(home, { recursive: true })
  const env = netnsEnv(home, extraEnv)
  const user: NetnsUser = {
    host,
    home,
    env,
    async cli(args, options = {}) {
      const r = await topology.exec(host, BIN, args, {
        env: { ...env, ...options.env },
        extendEnv: false,
        reject: false,
        input: options.input ?? '',
        timeout: options.timeout ?? 180_000,
      })
      return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
    },
    spawnCli(args, options = {}) {
      return topology.spawn(host, BIN, args, {
        env: { ...env, ...options.env },
        extendEnv: false,
        stdin: 'ignore',
      })
    },
    async peer(args, options = {}) {
      const r = await topology.exec(
        host,
        NODE,
        ['--disable-warning=ExperimentalWarning', PEER_SCRIPT, ...args],
        {
          env: { ...env, ...options.env },
          extendEnv: false,
          reject: false,
          stdin: 'ignore',
          timeout: options.timeout ?? 90_000,
        },
      )
      const events = String(r.stdout)
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as PeerEvent)
      return { exitCode: r.exitCode ?? -1, events, stderr: String(r.stderr) }
    },
    async login(url, first = false) {
      const args = ['login', url, '--username', OWNER.username, '--password', OWNER.password]
      if (first) args.push('--first-user-email', OWNER.email)
      const r = await user.cli(args)
      if (r.exitCode !== 0) throw new Error(`login from ${host.name} failed: ${r.stderr}`)
    },
  }
  return user
}

/**
 * A template like the shipped `local` one (same agent.sh), except that the
 * agent runs inside the namespace named by the `agent_netns` parameter,
 * with CODER_MESH_ICE_SERVERS from `ice_servers`.
 */
export async function writeNetnsTemplate(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true })
  await copyFile(join(ROOT, 'examples', 'templates', 'local', 'agent.sh'), join(dir, 'agent.sh'))
  await writeFile(join(dir, 'main.tf'), NETNS_TEMPLATE)
}

const NETNS_TEMPLATE = `# Test template: a workspace whose agent runs in a network namespace.
terraform {
  required_version = ">= 1.5"
}

variable "coder_mesh_url" {
  type = string
}

variable "coder_mesh_agent_token" {
  type      = string
  sensitive = true
}

variable "coder_mesh_agent_command" {
  type = string
}

variable "coder_mesh_start_count" {
  type = number
}

variable "coder_mesh_local_dir" {
  type = string
}

variable "agent_netns" {
  type        = string
  description = "The network namespace the agent runs in."

  validation {
    condition     = can(regex("^[a-z0-9-]+$", var.agent_netns))
    error_message = "agent_netns must be a namespace name."
  }
}

variable "ice_servers" {
  type        = string
  default     = ""
  description = "CODER_MESH_ICE_SERVERS for the agent."
}

locals {
  dir = trimsuffix(var.coder_mesh_local_dir, "/")
}

resource "terraform_data" "home" {
  input = { dir = local.dir }

  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh prepare"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }

  provisioner "local-exec" {
    when        = destroy
    working_dir = path.module
    command     = "sh ./agent.sh remove"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }
}

resource "terraform_data" "agent" {
  count      = var.coder_mesh_start_count
  depends_on = [terraform_data.home]

  input = { dir = local.dir }

  triggers_replace = plantimestamp()

  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh start"
    environment = {
      CODER_MESH_AGENT_DIR     = local.dir
      CODER_MESH_AGENT_COMMAND = "ip netns exec \${var.agent_netns} \${var.coder_mesh_agent_command}"
      CODER_MESH_URL           = var.coder_mesh_url
      CODER_MESH_AGENT_TOKEN   = var.coder_mesh_agent_token
      CODER_MESH_ICE_SERVERS   = var.ice_servers
    }
  }

  provisioner "local-exec" {
    working_dir = path.module
    command     = "sh ./agent.sh check"
    environment = { CODER_MESH_AGENT_DIR = local.dir }
  }

  provisioner "local-exec" {
    when        = destroy
    working_dir = path.module
    command     = "sh ./agent.sh stop"
    environment = { CODER_MESH_AGENT_DIR = self.input.dir }
  }
}
`
