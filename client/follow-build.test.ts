/**
 * Following a build's log while the coordinator goes away: the CLI says so
 * once on stderr, follows again with backoff, prints no line twice (the API
 * has no "since": lines already seen are skipped by seq), and reports how
 * the build ended. Against a stand-in that cuts the stream and answers like
 * a proxy with the coordinator down, and against a real server killed and
 * started again in the middle of a build.
 */
import { execa } from 'execa'
import { once } from 'node:events'
import { mkdir, writeFile } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname, join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { ApiClient } from '../sdk/api-client.ts'
import type { Build } from '../sdk/api-types.ts'
import {
  BIN,
  loginOwner,
  newCliUser,
  processesUnder,
  removeTree,
  runCli,
  startTestServer,
  waitFor,
  type TestServer,
} from '../test/harness.ts'
import { followBuild, LOST_COORDINATOR } from './commands/workspaces.ts'

const SLOW = { timeout: 240_000 }
const NOW = new Date().toISOString()

function build(status: Build['status']): Build {
  return {
    id: 'b-1',
    workspaceId: 'w-1',
    workspaceName: 'dev',
    number: 2,
    transition: 'start',
    templateVersion: 1,
    status,
    createdAt: NOW,
  }
}

function logLine(seq: number, text: string): string {
  return JSON.stringify({ type: 'log', seq, time: NOW, source: 'stdout', text }) + '\n'
}

describe('following a build through a coordinator outage (stand-in)', SLOW, () => {
  let logRequests = 0
  const requests: string[] = []
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`)
    req.resume()
    req.on('end', () => answer(req.url ?? '', res))
  })

  function answer(url: string, res: ServerResponse): void {
    if (url === '/api/v1/workspaces/dev/builds') {
      res.writeHead(201, { 'content-type': 'application/json' })
      res.end(JSON.stringify(build('queued')))
      return
    }
    if (url !== '/api/v1/builds/b-1/logs?follow=true') {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ code: 'MESH_NOT_FOUND', message: 'No such route.' }))
      return
    }
    logRequests++
    if (logRequests === 1) {
      // Two lines, then the connection is cut mid-stream.
      res.writeHead(200, { 'content-type': 'application/x-ndjson' })
      res.write(logLine(1, 'one') + logLine(2, 'two'))
      setTimeout(() => res.socket?.destroy(), 200)
    } else if (logRequests === 2) {
      // A proxy in front of the coordinator, which is down.
      res.writeHead(502, { 'content-type': 'text/html' })
      res.end('<html>Bad Gateway</html>')
    } else if (logRequests === 3) {
      // The coordinator starting up.
      res.writeHead(503, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ code: 'MESH_UNAVAILABLE', message: 'Starting.' }))
    } else {
      // Back: the whole log again, a new line, and the end.
      res.writeHead(200, { 'content-type': 'application/x-ndjson' })
      res.end(
        logLine(1, 'one') +
          logLine(2, 'two') +
          logLine(3, 'three') +
          JSON.stringify({ type: 'build', build: build('succeeded') }) +
          '\n',
      )
    }
  }

  let url: string

  beforeAll(async () => {
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })

  afterAll(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })

  afterEach(() => {
    vi.restoreAllMocks()
  })

  it('should say so once, follow again and print every line once', async () => {
    const cli = await newCliUser({ CODER_MESH_URL: url, CODER_MESH_SESSION_TOKEN: 'cms_x' })
    try {
      const r = await runCli(cli.env, ['start', 'dev'])
      expect(r.stderr).toBe(`${LOST_COORDINATOR}\n`)
      expect(r.exitCode).toBe(0)
      expect(r.stdout).toBe('one\ntwo\nthree\nWorkspace dev is running\n')
      expect(logRequests).toBe(4)
    } finally {
      await removeTree(cli.home)
    }
  })

  it('should give up with MESH_SERVER_UNREACHABLE once the retry time is over', async () => {
    // A port nothing listens on: a server started and stopped.
    const gone = createServer()
    gone.listen(0, '127.0.0.1')
    await once(gone, 'listening')
    const { port } = gone.address() as AddressInfo
    await new Promise((resolve) => gone.close(resolve))

    const stderr: string[] = []
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr.push(String(chunk))
      return true
    })
    const api = new ApiClient({ url: `http://127.0.0.1:${port}`, token: 'cms_x' })
    const started = Date.now()
    await expect(followBuild(api, build('running'), { retryFor: 1500 })).rejects.toMatchObject({
      code: 'MESH_SERVER_UNREACHABLE',
    })
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500)
    expect(stderr).toEqual([`${LOST_COORDINATOR}\n`])
  })
})

const SLOW_TEMPLATE = `
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo slow-begin; sleep 30; echo slow-end"
  }
}
`

describe('following a build while the real coordinator restarts', SLOW, () => {
  let server: TestServer

  beforeAll(async () => {
    server = await startTestServer()
    await loginOwner(server)
  })

  afterAll(async () => {
    if (server === undefined) return
    await server.stop()
    for (const pid of await processesUnder(server.dataDir)) process.kill(pid, 'SIGKILL')
    await removeTree(dirname(server.dataDir))
  })

  it('should wait for the coordinator to come back and report how the build ended', async () => {
    const dir = join(dirname(server.dataDir), 'slow')
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'main.tf'), SLOW_TEMPLATE)
    const push = await runCli(server.env, ['templates', 'push', 'slow', '-d', dir])
    expect(push.exitCode, push.stderr).toBe(0)

    const child = execa(BIN, ['create', 'w1', '--template', 'slow', '-y'], {
      env: server.env,
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: 200_000,
    })
    let seen = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
    })
    await waitFor('the first log line', async () => seen.includes('slow-begin\n'), 150_000)

    // Killed mid-build: the restarted coordinator marks the build failed.
    await server.restart(true)
    const r = await child
    const stdout = String(r.stdout)
    const stderr = String(r.stderr)
    expect(stderr.split('\n')[0]).toBe(LOST_COORDINATOR)
    expect(stderr.match(/Lost the coordinator/g)).toHaveLength(1)
    expect(stderr).toMatch(/\nerror: Build failed: [^\n]*restarted[^\n]* \(MESH_BUILD_FAILED\)$/)
    expect(stderr).not.toMatch(/MESH_SERVER_UNREACHABLE/)
    expect(r.exitCode).toBe(1)
    // Printed once, though the log was read again from its start.
    expect(stdout.match(/slow-begin\n/g)).toHaveLength(1)

    const show = await runCli(server.env, ['show', 'w1', '-o', 'json'])
    expect(JSON.parse(show.stdout)).toMatchObject({ status: 'failed' })
  })
})
