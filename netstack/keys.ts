import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'

/** Generates a new Ed25519 libp2p identity. */
export function newPeerKey(): Promise<PrivateKey> {
  return generateKeyPair('Ed25519')
}

export function encodePeerKey(key: PrivateKey): string {
  return Buffer.from(privateKeyToProtobuf(key)).toString('base64')
}

export function decodePeerKey(encoded: string): PrivateKey {
  return privateKeyFromProtobuf(Buffer.from(encoded, 'base64'))
}

/**
 * Loads the identity kept in `file`, or creates one there (mode 0600), so a
 * node keeps its peer id across restarts.
 */
export async function loadOrCreatePeerKey(file: string): Promise<PrivateKey> {
  try {
    return decodePeerKey((await readFile(file, 'utf8')).trim())
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }

  const key = await newPeerKey()
  await mkdir(dirname(file), { recursive: true, mode: 0o700 })
  const tmp = `${file}.${process.pid}.tmp`
  await writeFile(tmp, encodePeerKey(key) + '\n', { mode: 0o600 })
  await rename(tmp, file)
  return key
}
