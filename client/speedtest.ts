/**
 * `coder-mesh speedtest NAME`: throughput to and from the workspace agent
 * over the mesh (wire format in netstack/speedtest.ts), one stream each way
 * in turn, reported with the path of the connection that carried them.
 */
import { SPEEDTEST_PROTOCOL } from '../netstack/constants.ts'
import {
  megabytesPerSecond,
  speedtestStream,
  type SpeedtestDirection,
  type SpeedtestResult,
} from '../netstack/speedtest.ts'
import type { ApiClient } from '../sdk/api-client.ts'
import { SECOND } from '../sdk/config.ts'
import { openWorkspaceMesh, viaPath, type MeshPaths } from './mesh-client.ts'
import { write, writeJson } from './output.ts'

export const DEFAULT_SPEEDTEST_SECONDS = 5

export interface SpeedtestRunOptions {
  workspace: string
  /** How long each direction runs, in seconds. */
  seconds: number
  json: boolean
  /** Which paths to the agent to use; default `any`. */
  paths?: MeshPaths
  signal?: AbortSignal
}

export interface DirectionReport {
  bytes: number
  seconds: number
  /** 10^6 bytes a second. */
  megabytesPerSecond: number
}

export interface SpeedtestReport {
  workspace: string
  path: string
  seconds: number
  upload: DirectionReport
  download: DirectionReport
}

export async function runSpeedtest(
  api: ApiClient,
  options: SpeedtestRunOptions,
): Promise<SpeedtestReport> {
  const { workspace, signal } = options
  const mesh = await openWorkspaceMesh(api, workspace, { signal, paths: options.paths })
  try {
    const durationMs = options.seconds * SECOND
    const run = async (direction: SpeedtestDirection): Promise<[SpeedtestResult, string]> => {
      const stream = await mesh.openStream(SPEEDTEST_PROTOCOL, { signal })
      const onAbort = (): void => {
        stream.duplex.destroy(new Error('canceled'))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      try {
        return [await speedtestStream(stream.duplex, { direction, durationMs }), stream.path]
      } finally {
        signal?.removeEventListener('abort', onAbort)
      }
    }

    if (!options.json) {
      await write(
        `Speed test to ${workspace} ${viaPath(mesh.path())}, ${options.seconds} s each way:\n`,
      )
    }
    const [upload] = await run('upload')
    if (!options.json) await write(describeDirection(upload))
    const [download, path] = await run('download')
    if (!options.json) await write(describeDirection(download))

    const report: SpeedtestReport = {
      workspace,
      path,
      seconds: options.seconds,
      upload: directionReport(upload),
      download: directionReport(download),
    }
    if (options.json) await writeJson(report)
    return report
  } finally {
    await mesh.close()
  }
}

function directionReport(result: SpeedtestResult): DirectionReport {
  return {
    bytes: result.bytes,
    seconds: Number((result.ms / SECOND).toFixed(3)),
    megabytesPerSecond: Number(megabytesPerSecond(result).toFixed(2)),
  }
}

/** `upload:   143.20 MB/s (716.0 MB in 5.00 s)` */
export function describeDirection(result: SpeedtestResult): string {
  const label = `${result.direction}:`.padEnd(10)
  const rate = megabytesPerSecond(result).toFixed(2)
  const total = (result.bytes / 1e6).toFixed(1)
  return `${label}${rate} MB/s (${total} MB in ${(result.ms / SECOND).toFixed(2)} s)\n`
}
