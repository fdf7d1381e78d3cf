import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ClassicLevel } from 'classic-level'
import { ENV_TERRAFORM } from '../sdk/config.ts'
import {
  ENV_KEEP_WORKDIRS,
  provision,
  type ProvisionJob,
  type ProvisionLogLine,
  type ProvisionResult,
} from './index.ts'
import { liveProcesses } from './test-helpers.ts'

let workRoot: string
let scratch: string
let builds = 0

beforeAll(async () => {
  workRoot = await mkdtemp(join(tmpdir(), 'mesh-provision-work-'))
  scratch = await mkdtemp(join(tmpdir(), 'mesh-provision-scratch-'))
})

afterAll(async () => {
  await rm(workRoot, { recursive: true, force: true })
  await rm(scratch, { recursive: true, force: true })
})

afterEach(() => {
  delete process.env[ENV_KEEP_WORKDIRS]
  delete process.env[ENV_TERRAFORM]
})

function job(main: string, overrides: Partial<ProvisionJob> = {}): ProvisionJob {
  builds++
  return {
    buildId: `build-${builds}`,
    transition: 'start',
    files: [{ path: 'main.tf', content: Buffer.from(main) }],
    variables: {},
    sensitive: [],
    workRoot,
    ...overrides,
  }
}

interface Run {
  result: ProvisionResult
  lines: ProvisionLogLine[]
  /** Every line, joined with newlines. */
  text: string
}

async function run(j: ProvisionJob, signal?: AbortSignal): Promise<Run> {
  const lines: ProvisionLogLine[] = []
  const result = await provision(j, { signal, onLog: (line) => lines.push(line) })
  return { result, lines, text: lines.map((line) => line.text).join('\n') }
}

/** Terraform wraps its error text at 78 columns; compare with spaces squeezed. */
function squeeze(text: string): string {
  return text.replace(/\s+/g, ' ')
}

const ECHO = `
resource "terraform_data" "hello" {
  provisioner "local-exec" {
    command = "echo hello-from-local-exec"
  }
}
`

describe('provision', () => {
  it('runs init and apply, streaming the output, and returns the state', async () => {
    const { result, lines } = await run(job(ECHO))

    expect(result).toMatchObject({ ok: true })
    expect(result.error).toBeUndefined()
    const state = JSON.parse(result.state?.toString() ?? '{}') as { resources?: unknown[] }
    expect(state.resources).toHaveLength(1)

    expect(lines).toContainEqual({
      source: 'stdout',
      text: 'terraform_data.hello (local-exec): hello-from-local-exec',
    })
    const own = lines.filter((line) => line.source === 'provisioner').map((line) => line.text)
    expect(own).toEqual(['terraform init', 'exit status 0', 'terraform apply', 'exit status 0'])
    expect(lines.some((line) => line.text.includes('\n'))).toBe(false)
  })

  it('removes the working directory afterwards', async () => {
    await run(job(ECHO))
    expect(await readdir(workRoot)).toEqual([])
  })

  it('keeps the working directory when CODER_MESH_KEEP_WORKDIRS=1', async () => {
    process.env[ENV_KEEP_WORKDIRS] = '1'
    const j = job(ECHO)
    const { result, text } = await run(j)

    expect(result.ok).toBe(true)
    const dir = join(workRoot, j.buildId)
    expect(text).toContain(`working directory kept: ${dir}`)
    try {
      expect(await readdir(dir)).toEqual(expect.arrayContaining(['main.tf', 'terraform.tfstate']))
    } finally {
      await rm(dir, { recursive: true })
    }
  })

  it('passes variables as TF_VAR_<name>', async () => {
    const main = `
variable "greeting" {
  type = string
}
resource "terraform_data" "hello" {
  provisioner "local-exec" {
    command = "echo greeting=$GREETING"
    environment = { GREETING = var.greeting }
  }
}
`
    const { result, text } = await run(job(main, { variables: { greeting: 'hi there' } }))

    expect(result.ok).toBe(true)
    expect(text).toContain('(local-exec): greeting=hi there')
  })

  it('writes files in folders and keeps their contents byte for byte', async () => {
    const main = `
resource "terraform_data" "read" {
  provisioner "local-exec" {
    command = "od -An -tx1 scripts/data.bin"
  }
}
`
    const files = [
      { path: './main.tf', content: Buffer.from(main) },
      { path: 'scripts/data.bin', content: Buffer.from([0, 1, 2, 255]) },
    ]
    const { result, text } = await run(job('', { files }))

    expect(result.ok).toBe(true)
    expect(text).toContain('00 01 02 ff')
  })

  it('reports a failing local-exec, with Terraform’s error in the log', async () => {
    const main = `
resource "terraform_data" "broken" {
  provisioner "local-exec" {
    command = "echo about-to-fail; exit 3"
  }
}
`
    const { result, lines, text } = await run(job(main))

    expect(result.ok).toBe(false)
    expect(result.error).toBe('terraform apply: exit status 1')
    expect(lines.filter((line) => line.source === 'stderr').length).toBeGreaterThan(0)
    expect(squeeze(text)).toContain('Error: local-exec provisioner error')
    expect(squeeze(text)).toContain('exit status 3')
    expect(text).toContain('about-to-fail')
    // The tainted resource is in the state, so the next build replaces it.
    expect(result.state?.toString()).toContain('"status": "tainted"')
  })

  it('reports a configuration error from terraform init', async () => {
    const { result, text } = await run(job('resource "terraform_data" {'))

    expect(result.ok).toBe(false)
    expect(result.error).toBe('terraform init: exit status 1')
    expect(text).toContain('Error')
  })

  it('reuses the state of the previous build', async () => {
    const marker = join(scratch, 'runs.txt')
    const main = `
resource "terraform_data" "once" {
  provisioner "local-exec" {
    command = "echo ran >> '${marker}'"
  }
}
`
    const first = await run(job(main))
    expect(first.result.ok).toBe(true)

    const second = await run(job(main, { state: first.result.state }))
    expect(second.result.ok).toBe(true)
    expect(second.text).toContain('No changes.')
    expect(await readFile(marker, 'utf8')).toBe('ran\n')

    // Without the state, Terraform would create it again.
    const fresh = await run(job(main))
    expect(fresh.result.ok).toBe(true)
    expect(await readFile(marker, 'utf8')).toBe('ran\nran\n')
  })

  it('runs terraform destroy for a delete build', async () => {
    const main = `
resource "terraform_data" "thing" {
  provisioner "local-exec" {
    when    = destroy
    command = "echo destroying-thing"
  }
}
`
    const created = await run(job(main))
    const deleted = await run(job(main, { transition: 'delete', state: created.result.state }))

    expect(deleted.result.ok).toBe(true)
    expect(deleted.lines).toContainEqual({ source: 'provisioner', text: 'terraform destroy' })
    expect(deleted.text).toContain('destroying-thing')
    expect(deleted.text).toContain('Destroy complete! Resources: 1 destroyed.')
    const state = JSON.parse(deleted.result.state?.toString() ?? '{}') as { resources?: unknown[] }
    expect(state.resources).toEqual([])
  })

  it('never logs a sensitive value', async () => {
    const secret = 'hunter2-Sup3r"Secret'
    const token = 'agent-token-0123456789'
    // `password` is not sensitive to Terraform, so it prints it; `secret` is,
    // but Terraform still prints it in a failed command's output.
    const main = `
variable "password" {
  type = string
}
variable "secret" {
  type      = string
  sensitive = true
}
variable "coder_mesh_agent_token" {
  type = string
}
resource "terraform_data" "leak" {
  provisioner "local-exec" {
    command = "echo 'password=\${var.password}' 'token=\${var.coder_mesh_agent_token}'"
  }
  provisioner "local-exec" {
    command     = "echo \\"secret=$SECRET\\"; exit 1"
    environment = { SECRET = var.secret }
  }
}
`
    const { result, text } = await run(
      job(main, {
        variables: { password: secret, secret, coder_mesh_agent_token: token },
        // The agent token is hidden even when the job forgets to say so.
        sensitive: ['password', 'secret'],
      }),
    )

    expect(result.ok).toBe(false)
    expect(text).toContain('[redacted]')
    expect(text).toContain('password=[redacted]')
    expect(text).toContain('token=[redacted]')
    expect(text).toContain('secret=[redacted]')
    expect(text).not.toContain('hunter2')
    expect(text).not.toContain(token)
    expect(result.error).not.toContain('hunter2')
  })

  it('refuses file paths outside the working directory', async () => {
    for (const path of ['../x.tf', 'a/../../x.tf', '/etc/x.tf', 'a\\b.tf', '']) {
      const j = job(ECHO)
      j.files.push({ path, content: Buffer.from('') })
      await expect(run(j)).rejects.toMatchObject({ name: 'MeshError', code: 'MESH_BAD_REQUEST' })
    }
    expect(await readdir(workRoot)).toEqual([])
  })

  it('refuses a build id that is not one folder name', async () => {
    await expect(run(job(ECHO, { buildId: '../escape' }))).rejects.toMatchObject({
      code: 'MESH_BAD_REQUEST',
    })
  })

  it('refuses a variable name Terraform cannot have', async () => {
    await expect(run(job(ECHO, { variables: { 'a=b': 'x' } }))).rejects.toMatchObject({
      code: 'MESH_BAD_REQUEST',
    })
  })

  it('ignores state files that came with the template', async () => {
    const j = job(ECHO)
    j.files.push({ path: 'terraform.tfstate', content: Buffer.from('not a state') })
    const { result, text } = await run(j)

    expect(result.ok).toBe(true)
    expect(text).toContain('ignoring template file terraform.tfstate')
  })

  it('hands terraform and its children no descriptor of ours, such as the store', async () => {
    // LevelDB opens its files without O_CLOEXEC: a real store, open here.
    const storeDir = join(scratch, 'open-store')
    const db = new ClassicLevel(storeDir)
    await db.open()
    try {
      await db.put('k', 'v')
      const { result, text } = await run(
        job(`
resource "terraform_data" "fds" {
  provisioner "local-exec" {
    command = "ls -l /proc/$$/fd | sed 's/^/fd: /'"
  }
}`),
      )
      expect(result.ok, text).toBe(true)
      expect(text).toMatch(/fd: /)
      expect(text).not.toContain(storeDir)
    } finally {
      await db.close()
    }
  })

  it('fails cleanly when terraform cannot be run', async () => {
    process.env[ENV_TERRAFORM] = join(scratch, 'no-such-terraform')
    const { result } = await run(job(ECHO))

    expect(result.ok).toBe(false)
    expect(result.error).toMatch(/^terraform init: cannot run terraform \(/)
    expect(await readdir(workRoot)).toEqual([])
  })

  it('interrupts terraform when the signal aborts, leaving nothing running', async () => {
    // A duration no other process uses, to find leftovers by.
    const main = `
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo slow-started; sleep 97.25"
  }
}
`
    const controller = new AbortController()
    const lines: ProvisionLogLine[] = []
    const started = Date.now()
    const result = await provision(job(main), {
      signal: controller.signal,
      onLog: (line) => {
        lines.push(line)
        if (line.text.endsWith('slow-started')) controller.abort()
      },
    })

    expect(Date.now() - started).toBeLessThan(20_000)
    expect(result).toMatchObject({ ok: false, error: 'terraform apply: canceled' })
    expect(lines).toContainEqual({
      source: 'provisioner',
      text: 'canceled: interrupting terraform',
    })
    expect(liveProcesses().filter((p) => p.cmdline.includes('sleep 97.25'))).toEqual([])
  })

  it('does not start terraform when already canceled', async () => {
    const { result, text } = await run(job(ECHO), AbortSignal.abort())

    expect(result).toMatchObject({ ok: false, error: 'terraform init: canceled' })
    expect(text).not.toContain('Initializing')
  })
})
