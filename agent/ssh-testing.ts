/**
 * Test fixture: the agent's real SSH service (createSshService) on a
 * loopback TCP socket, with an ssh2 client connected to it. Faster than a
 * mesh round trip, for tests of the SSH server's own behaviour.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import ssh2 from 'ssh2'
import type { MeshStreamContext } from '../netstack/serve.ts'
import { createLogger } from '../sdk/logger.ts'
import { createSshService } from './ssh.ts'

export interface LocalSsh {
  client: ssh2.Client
  /** A temporary folder, removed by close(). */
  dir: string
  close(): Promise<void>
}

export async function startLocalSsh(): Promise<LocalSsh> {
  const log = createLogger('mesh:test', 'silent')
  const dir = await mkdtemp(join(tmpdir(), 'coder-mesh-ssh-'))
  const service = await createSshService({ dir: join(dir, 'agent'), log })
  const listener = createServer((socket) => {
    service.handle(socket, { log, claims: {} } as unknown as MeshStreamContext)
  })
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  const client = new ssh2.Client()
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve).once('error', reject)
    client.connect({
      host: '127.0.0.1',
      port: (listener.address() as AddressInfo).port,
      username: 'test',
    })
  })
  return {
    client,
    dir,
    async close() {
      client.end()
      await service.close()
      listener.close()
      await rm(dir, { recursive: true, force: true })
    },
  }
}
