/**
 * The data-plane commands besides ssh: `port-forward`, `ping` and
 * `speedtest`. Their modules (libp2p) load only when the command runs.
 */
import { Option, type Command } from 'commander'
import { MeshError } from '../../sdk/errors.ts'
import { workspaceFromHost } from '../args.ts'
import { examples, lifetime } from '../cli.ts'
import type { MeshPaths } from '../mesh-client.ts'
import { outputOption, type OutputFormat } from '../output.ts'
import { apiClient } from '../session.ts'
import { configDir } from '../../sdk/config.ts'

/** Longest speed test per direction, in seconds (the agent's cap, MAX_SPEEDTEST_MS). */
const MAX_SPEEDTEST_SECONDS = 30

// Types only: mesh-client.ts loads libp2p, which --help must not wait for.
type PathFlag = MeshPaths

/** `--path`: which paths to the agent to dial (MeshPaths in mesh-client.ts). */
function pathOption(): Option {
  return new Option(
    '--path <path>',
    'paths to the agent: any, direct (never the relay), relay (only the relay)',
  )
    .choices(['any', 'direct', 'relay'])
    .default('any')
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value]
}

/**
 * An AbortSignal that fires on SIGINT, SIGTERM or SIGHUP (the terminal
 * closed), for commands that run until stopped, so that they clean up as
 * on Ctrl-C; `done` removes the handlers.
 */
function stopSignal(): { signal: AbortSignal; done: () => void } {
  const controller = new AbortController()
  const stop = (): void => controller.abort()
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
  for (const signal of signals) process.once(signal, stop)
  return {
    signal: controller.signal,
    done: () => {
      for (const signal of signals) process.off(signal, stop)
    },
  }
}

/** Parses a number flag: finite, within [min, max], an integer when `integer`. */
function numberFlag(
  flag: string,
  text: string,
  range: { min: number; max?: number; integer?: boolean },
): number {
  const value = Number(text)
  const ok =
    text.trim() !== '' &&
    Number.isFinite(value) &&
    value >= range.min &&
    (range.max === undefined || value <= range.max) &&
    (range.integer !== true || Number.isInteger(value))
  if (!ok) {
    const kind = range.integer === true ? 'a whole number' : 'a number'
    const bounds =
      range.max === undefined ? `at least ${range.min}` : `${range.min} to ${range.max}`
    throw new MeshError(
      'MESH_BAD_ARGUMENT',
      `Invalid ${flag} ${JSON.stringify(text)}: use ${kind}, ${bounds}.`,
    )
  }
  return value
}

export function registerMeshCommands(program: Command): void {
  examples(
    program
      .command('port-forward')
      .description('forward local TCP ports to ports on the workspace, until Ctrl-C')
      .argument('<workspace>', 'workspace name')
      .option(
        '--tcp <[addr:]local:remote>',
        'forward local port to remote port (repeatable; local 0 picks a free port)',
        collect,
        [],
      )
      .addOption(pathOption())
      .addHelpText(
        'after',
        '\nEach local connection is carried on its own mesh stream to 127.0.0.1:REMOTE (or\n' +
          '[::1]:REMOTE) inside the workspace. A refused remote port closes the local\n' +
          'connection at once. The local address defaults to 127.0.0.1. Without --tcp,\n' +
          "it names the workspace's listening ports (as 'coder-mesh show' lists them).",
      )
      .action(async (workspace: string, flags: { tcp: string[]; path: PathFlag }) => {
        const { nothingToForward, parseForwardSpecs, runPortForward } =
          await import('../port-forward.ts')
        if (flags.tcp.length === 0) {
          throw await nothingToForward(await apiClient(), workspaceFromHost(workspace))
        }
        const specs = parseForwardSpecs(flags.tcp)
        const api = await apiClient()
        const stop = stopSignal()
        try {
          await runPortForward(api, {
            workspace: workspaceFromHost(workspace),
            specs,
            paths: flags.path,
            signal: stop.signal,
          })
        } finally {
          stop.done()
        }
      }),
    'coder-mesh port-forward dev --tcp 8080:8080',
    'coder-mesh port-forward dev --tcp 18080:80 --tcp 0.0.0.0:5432:5432',
  )

  examples(
    program
      .command('connect')
      .description(
        'stay on the mesh: a SOCKS5 proxy to NAME.coder-mesh, reused by ssh, until Ctrl-C',
      )
      .option(
        '--socks <[host:]port>',
        'where the SOCKS5 proxy listens (port 0: any free one)',
        '127.0.0.1:1080',
      )
      .addOption(pathOption())
      .addHelpText(
        'after',
        '\nA connection through the proxy to NAME.coder-mesh:PORT reaches PORT on the\n' +
          "workspace's loopback, as port-forward does; port 22 is the agent's SSH server.\n" +
          "Another user's workspace is NAME.OWNER.coder-mesh. Other hosts are refused.\n" +
          'While it runs, coder-mesh ssh (and ssh through config-ssh) use its\n' +
          'connections instead of dialing each time. Anyone who can reach the proxy\n' +
          'reaches your workspaces in your name: keep it on loopback. It keeps the login\n' +
          'it started with until stopped, logout or not. (The nc -X example needs\n' +
          "Debian's netcat-openbsd.)",
      )
      .action(async (flags: { socks: string; path: PathFlag }) => {
        const { parseSocksAddress, runConnect } = await import('../connect.ts')
        const socks = parseSocksAddress(flags.socks)
        const api = await apiClient()
        const stop = stopSignal()
        try {
          await runConnect(api, {
            socks,
            paths: flags.path,
            configDir: configDir(),
            signal: stop.signal,
          })
        } finally {
          stop.done()
        }
      }),
    'coder-mesh connect',
    'coder-mesh connect --socks 127.0.0.1:1055',
    'curl --socks5-hostname 127.0.0.1:1080 http://dev.coder-mesh:8080/',
    "ssh -o ProxyCommand='nc -X 5 -x 127.0.0.1:1080 %h %p' dev.coder-mesh",
  )

  examples(
    program
      .command('ping')
      .description('measure round trips to the workspace agent and show the path they take')
      .argument('<workspace>', 'workspace name')
      .option('-n, --count <n>', 'pings to send; 0 pings until Ctrl-C', '5')
      .option('-i, --interval <seconds>', 'wait between pings', '1')
      .addOption(pathOption())
      .addOption(outputOption())
      .action(
        async (
          workspace: string,
          flags: { count: string; interval: string; path: PathFlag; output: OutputFormat },
        ) => {
          const count = numberFlag('-n', flags.count, { min: 0, integer: true })
          const interval = numberFlag('-i', flags.interval, { min: 0, max: 3600 })
          const [api, { runPing }] = await Promise.all([apiClient(), import('../ping.ts')])
          const stop = stopSignal()
          try {
            const report = await runPing(api, {
              workspace: workspaceFromHost(workspace),
              count,
              interval: interval * 1000,
              json: flags.output === 'json',
              paths: flags.path,
              signal: stop.signal,
            })
            // Like ping(8): a run where nothing answered is a failure.
            if (report.received === 0 && report.sent > 0) lifetime.exitCode = 1
          } finally {
            stop.done()
          }
        },
      ),
    'coder-mesh ping dev',
    'coder-mesh ping dev -n 0',
    'coder-mesh ping dev -n 3 -o json',
    'coder-mesh ping dev --path relay',
  )

  examples(
    program
      .command('speedtest')
      .description('measure throughput to and from the workspace agent, and show the path')
      .argument('<workspace>', 'workspace name')
      .option('-t, --time <seconds>', 'how long each direction runs', '5')
      .addOption(pathOption())
      .addOption(outputOption())
      .action(
        async (
          workspace: string,
          flags: { time: string; path: PathFlag; output: OutputFormat },
        ) => {
          const seconds = numberFlag('-t', flags.time, { min: 0.1, max: MAX_SPEEDTEST_SECONDS })
          const [api, { runSpeedtest }] = await Promise.all([
            apiClient(),
            import('../speedtest.ts'),
          ])
          const stop = stopSignal()
          try {
            await runSpeedtest(api, {
              workspace: workspaceFromHost(workspace),
              seconds,
              json: flags.output === 'json',
              paths: flags.path,
              signal: stop.signal,
            })
          } finally {
            stop.done()
          }
        },
      ),
    'coder-mesh speedtest dev',
    'coder-mesh speedtest dev -t 10 -o json',
  )
}
