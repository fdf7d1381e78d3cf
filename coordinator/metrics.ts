/**
 * Prometheus metrics, served at /metrics. Each coordinator has its own
 * registry (several run in one test process). Counters are bumped as things
 * happen; gauges read their sources when scraped.
 *
 * Names follow `coder_mesh_<component>_<thing>[_total]`:
 *
 *   coder_mesh_http_requests_total{method,route,status}
 *   coder_mesh_http_request_duration_seconds{method,route}
 *   coder_mesh_builds_total{transition,status}         builds that ended
 *   coder_mesh_builds{status}                           queued and running now
 *   coder_mesh_agents_connected
 *   coder_mesh_relay_reservations, coder_mesh_relay_circuits, coder_mesh_relay_grants
 *   coder_mesh_login_failures_total{reason}
 *
 * `route` is the route pattern (`/api/v1/workspaces/:name`), never the raw
 * path, so its values stay few; requests that match no route count as
 * `unmatched`.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

export interface MetricsSources {
  builds(): { queued: number; running: number }
  agentsConnected(): number
  relay(): { reservations: number; circuits: number; grants: number }
}

export interface Metrics {
  readonly registry: Registry
  /** Sets where gauges read from; until then they read zero. */
  setSources(sources: MetricsSources): void
  httpRequest(method: string, route: string, status: number, seconds: number): void
  buildFinished(transition: string, status: string): void
  loginFailed(reason: 'bad_credentials' | 'rate_limited' | 'locked' | 'suspended'): void
  /** The exposition text. */
  render(): Promise<string>
  contentType: string
}

export function createMetrics(): Metrics {
  const registry = new Registry()
  let sources: MetricsSources | undefined
  collectDefaultMetrics({ register: registry, prefix: 'coder_mesh_' })

  const requests = new Counter({
    name: 'coder_mesh_http_requests_total',
    help: 'HTTP requests answered, by route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  })
  const duration = new Histogram({
    name: 'coder_mesh_http_request_duration_seconds',
    help: 'Time to answer an HTTP request (streams: to the first byte).',
    labelNames: ['method', 'route'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  })
  const builds = new Counter({
    name: 'coder_mesh_builds_total',
    help: 'Builds that ended, by transition and final status.',
    labelNames: ['transition', 'status'] as const,
    registers: [registry],
  })
  const loginFailures = new Counter({
    name: 'coder_mesh_login_failures_total',
    help: 'Refused logins, by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
  })

  new Gauge({
    name: 'coder_mesh_builds',
    help: 'Builds queued or running in this coordinator now.',
    labelNames: ['status'] as const,
    registers: [registry],
    collect() {
      const stats = sources?.builds() ?? { queued: 0, running: 0 }
      this.set({ status: 'queued' }, stats.queued)
      this.set({ status: 'running' }, stats.running)
    },
  })
  new Gauge({
    name: 'coder_mesh_agents_connected',
    help: 'Workspace agents that registered within the heartbeat window.',
    registers: [registry],
    collect() {
      this.set(sources?.agentsConnected() ?? 0)
    },
  })
  const relayGauge = (name: string, help: string, key: 'reservations' | 'circuits' | 'grants') =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(sources?.relay()[key] ?? 0)
      },
    })
  relayGauge('coder_mesh_relay_reservations', 'Relay reservations held by agents.', 'reservations')
  relayGauge('coder_mesh_relay_circuits', 'Relayed connections open through the relay.', 'circuits')
  relayGauge('coder_mesh_relay_grants', 'Unexpired client-to-agent relay grants.', 'grants')

  return {
    registry,
    setSources(next) {
      sources = next
    },
    httpRequest(method, route, status, seconds) {
      requests.inc({ method, route, status: String(status) })
      duration.observe({ method, route }, seconds)
    },
    buildFinished(transition, status) {
      builds.inc({ transition, status })
    },
    loginFailed(reason) {
      loginFailures.inc({ reason })
    },
    render: () => registry.metrics(),
    contentType: registry.contentType,
  }
}
