/**
 * Every environment variable coder-mesh reads, declared and read here only.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'

export const ENV_URL = 'CODER_MESH_URL'
export const ENV_SESSION_TOKEN = 'CODER_MESH_SESSION_TOKEN'
export const ENV_CONFIG_DIR = 'CODER_MESH_CONFIG_DIR'
export const ENV_DATA_DIR = 'CODER_MESH_DATA_DIR'
export const ENV_AGENT_TOKEN = 'CODER_MESH_AGENT_TOKEN'
export const ENV_AGENT_DIR = 'CODER_MESH_AGENT_DIR'
export const ENV_LOG_LEVEL = 'CODER_MESH_LOG_LEVEL'
export const ENV_TERRAFORM = 'CODER_MESH_TERRAFORM'

export const SECOND = 1000
export const MINUTE = 60 * SECOND
export const HOUR = 60 * MINUTE

function env(name: string): string | undefined {
  const value = process.env[name]
  return value === undefined || value === '' ? undefined : value
}

export function envUrl(): string | undefined {
  return env(ENV_URL)
}

export function envSessionToken(): string | undefined {
  return env(ENV_SESSION_TOKEN)
}

export function envAgentToken(): string | undefined {
  return env(ENV_AGENT_TOKEN)
}

export function envLogLevel(): string | undefined {
  return env(ENV_LOG_LEVEL)
}

/** The terraform binary to run; `terraform` from PATH unless overridden. */
export function terraformBinary(): string {
  return env(ENV_TERRAFORM) ?? 'terraform'
}

/** Where the CLI keeps its session: $CODER_MESH_CONFIG_DIR or the XDG config folder. */
export function configDir(): string {
  const explicit = env(ENV_CONFIG_DIR)
  if (explicit !== undefined) return explicit
  const xdg = env('XDG_CONFIG_HOME') ?? join(homedir(), '.config')
  return join(xdg, 'coder-mesh')
}

/** Where the server keeps its store: $CODER_MESH_DATA_DIR or the XDG data folder. */
export function defaultDataDir(): string {
  const explicit = env(ENV_DATA_DIR)
  if (explicit !== undefined) return explicit
  const xdg = env('XDG_DATA_HOME') ?? join(homedir(), '.local', 'share')
  return join(xdg, 'coder-mesh')
}

/** Where an agent keeps its identity: $CODER_MESH_AGENT_DIR or the current folder. */
export function agentDir(): string {
  return env(ENV_AGENT_DIR) ?? process.cwd()
}

/** Environment handed to processes the agent starts, minus the agent's own secrets. */
export function childEnvironment(extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue
    if (key === ENV_AGENT_TOKEN || key === ENV_SESSION_TOKEN) continue
    out[key] = value
  }
  return { ...out, ...extra }
}
