/**
 * The OpenSSH anchors: Debian's `openssh-server` sshd started by the bench
 * on a loopback port, as a child (`sshd -D -f CONFIG -e`), with a throwaway
 * host key, a throwaway user key and a config of its own, so nothing of the
 * system's SSH set-up is used or touched. One ssh_config serves both sides
 * of every comparison:
 *
 * - `bench-sshd`: the local sshd;
 * - `coder-mesh.NAME`: a workspace, through `coder-mesh ssh --stdio` as
 *   ProxyCommand (what `config-ssh` will write, once it exists).
 *
 * Both use the same user key and the same client options, so the only
 * difference is what is on the other side.
 */
import { execa, type ResultPromise } from 'execa'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../test/harness.ts'

export const SSHD_HOST = 'bench-sshd'
export const INSTALL_HINT = 'sshd not found: install it with `apt-get install openssh-server`'

const SSHD_PATHS = ['/usr/sbin/sshd', '/usr/local/sbin/sshd']

export interface OpenSsh {
  dir: string
  /** The ssh_config holding both hosts. */
  config: string
  /** Undefined when no sshd is installed (the rows become missing). */
  sshd?: { port: number; child: ResultPromise }
  /** Runs `ssh -F config ...args`, in `env`; rejects on a non-zero exit. */
  ssh(args: string[], env?: Record<string, string>): Promise<void>
  stop(): Promise<void>
}

function findSshd(): string | undefined {
  return SSHD_PATHS.find((p) => existsSync(p))
}

/**
 * Writes keys and configs into a fresh temp folder and starts sshd (when
 * installed). `proxyCommand` is the coder-mesh CLI for the workspace hosts.
 */
export async function startOpenSsh(proxyCommand: string): Promise<OpenSsh> {
  const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-bench-ssh-'))
  // The folder holds private keys: stop() removes it, as does a failed start.
  const removeDir = (): Promise<void> => rm(dir, { recursive: true, force: true })
  const userKey = join(dir, 'user_ed25519')
  const hostKey = join(dir, 'host_ed25519')
  for (const key of [userKey, hostKey]) {
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'bench', '-f', key])
  }
  await writeFile(join(dir, 'authorized_keys'), await readFile(`${userKey}.pub`))
  const user = userInfo().username
  const sshdPath = findSshd()
  const port = sshdPath === undefined ? 0 : await freePort()

  const client = [
    `  User ${user}`,
    `  IdentityFile ${userKey}`,
    '  IdentitiesOnly yes',
    '  StrictHostKeyChecking no',
    '  UserKnownHostsFile /dev/null',
    '  LogLevel ERROR',
    '  BatchMode yes',
  ]
  const config = join(dir, 'ssh_config')
  await writeFile(
    config,
    [
      `Host ${SSHD_HOST}`,
      '  HostName 127.0.0.1',
      `  Port ${port}`,
      ...client,
      'Host coder-mesh.*',
      `  ProxyCommand '${proxyCommand}' ssh --stdio %h`,
      ...client,
      '',
    ].join('\n'),
  )

  const ssh = async (args: string[], env?: Record<string, string>): Promise<void> => {
    await execa('ssh', ['-F', config, ...args], {
      env,
      extendEnv: env === undefined,
      stdin: 'ignore',
      stdout: 'ignore',
      timeout: 600_000,
    })
  }

  if (sshdPath === undefined) {
    return { dir, config, ssh, stop: removeDir }
  }

  const sshdConfig = join(dir, 'sshd_config')
  await writeFile(
    sshdConfig,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      'PidFile none',
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      // The key files live in a temp folder that sshd's ownership checks
      // would refuse; they are throwaway.
      'StrictModes no',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      'UsePAM no',
      'AllowTcpForwarding yes',
      'LogLevel ERROR',
      '',
    ].join('\n'),
  )
  // Debian's service creates the privilege separation folder at boot; the
  // bench starts sshd without the service.
  if (process.getuid?.() === 0) await mkdir('/run/sshd', { recursive: true, mode: 0o755 })
  const child = execa(sshdPath, ['-D', '-e', '-f', sshdConfig], {
    reject: false,
    stdin: 'ignore',
    stdout: 'ignore',
    stderr: 'pipe',
  })
  child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`sshd: ${chunk.toString()}`))
  const started = child.then((r) => {
    throw new Error(`sshd exited ${r.exitCode}`)
  })
  started.catch(() => undefined)
  // Ready once a login works.
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      await Promise.race([ssh([SSHD_HOST, 'true']), started])
      break
    } catch (err) {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill()
        await removeDir()
        throw new Error(`sshd did not come up: ${(err as Error).message}`, { cause: err })
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  return {
    dir,
    config,
    sshd: { port, child },
    ssh,
    async stop() {
      child.kill('SIGTERM')
      await child
      await removeDir()
    },
  }
}

/**
 * Starts `ssh -N -L LOCAL:127.0.0.1:REMOTE host`; resolves with the local
 * port once the forward listens (ExitOnForwardFailure makes a failure exit).
 */
export async function startSshForward(
  openssh: OpenSsh,
  host: string,
  remote: number,
  env?: Record<string, string>,
): Promise<{ port: number; child: ResultPromise }> {
  const port = await freePort()
  const child = execa(
    'ssh',
    [
      '-F',
      openssh.config,
      '-N',
      '-o',
      'ExitOnForwardFailure=yes',
      '-L',
      `127.0.0.1:${port}:127.0.0.1:${remote}`,
      host,
    ],
    { env, extendEnv: env === undefined, reject: false, stdin: 'ignore', buffer: false },
  )
  return { port, child }
}
