/**
 * The workspace's listening TCP ports, from /proc/net/tcp and /proc/net/tcp6
 * (state 0A is LISTEN), with the process that listens when the agent can see
 * it: the socket's inode is matched against the `socket:[inode]` links in
 * /proc/<pid>/fd. That scan reads every process's fd folder, so it runs only
 * when the set of listening sockets changed; otherwise the last names are
 * reused. Sockets of the agent itself (its libp2p listener) are left out.
 * Processes of other users are not readable: their ports come without a name.
 */
import { readdir, readFile, readlink } from 'node:fs/promises'
import { MAX_REPORTED_PORTS, type ListeningPort } from '../sdk/api-types.ts'

const LISTEN = '0A'

interface Socket {
  port: number
  network: 'tcp' | 'tcp6'
  address: string
  inode: string
}

/** An address from /proc/net/tcp*: little-endian 32-bit words in hex. */
export function decodeAddress(hex: string): string {
  if (hex.length === 8) {
    const n = Number.parseInt(hex, 16)
    return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24].join('.')
  }
  const bytes: number[] = []
  for (let word = 0; word < 4; word++) {
    const w = hex.slice(word * 8, word * 8 + 8)
    for (let i = 3; i >= 0; i--) bytes.push(Number.parseInt(w.slice(i * 2, i * 2 + 2), 16))
  }
  // ::ffff:a.b.c.d (an IPv4 address on an IPv6 socket)
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return `::ffff:${bytes.slice(12).join('.')}`
  }
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16))
  // The longest run of zero groups becomes "::".
  let best = -1
  let bestLength = 0
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === '0') j++
    if (j - i > bestLength) {
      best = i
      bestLength = j - i
    }
    i = j
  }
  if (bestLength < 2) return groups.join(':')
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLength).join(':')}`
}

/** The LISTEN sockets in one /proc/net/tcp* file's text. */
export function parseProcNetTcp(text: string, network: 'tcp' | 'tcp6'): Socket[] {
  const out: Socket[] = []
  for (const line of text.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/)
    if (fields.length < 10 || fields[3] !== LISTEN) continue
    const [addressHex, portHex] = (fields[1] ?? '').split(':')
    if (addressHex === undefined || portHex === undefined) continue
    const port = Number.parseInt(portHex, 16)
    if (!(port >= 1 && port <= 65535)) continue
    out.push({ port, network, address: decodeAddress(addressHex), inode: fields[9] ?? '' })
  }
  return out
}

async function readSockets(): Promise<Socket[]> {
  const files: ['tcp' | 'tcp6', string][] = [
    ['tcp', '/proc/net/tcp'],
    ['tcp6', '/proc/net/tcp6'],
  ]
  const out: Socket[] = []
  for (const [network, file] of files) {
    const text = await readFile(file, 'utf8').catch(() => '')
    out.push(...parseProcNetTcp(text, network))
  }
  return out
}

/** Socket inodes held by process `pid`. */
async function socketInodes(pid: string): Promise<string[]> {
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])
  const inodes: string[] = []
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')
    const m = /^socket:\[(\d+)\]$/.exec(target)
    if (m?.[1] !== undefined) inodes.push(m[1])
  }
  return inodes
}

/** inode → process name, for the inodes asked about. */
async function owners(wanted: Set<string>): Promise<Map<string, string>> {
  const found = new Map<string, string>()
  const pids = (await readdir('/proc').catch(() => [] as string[])).filter((p) => /^\d+$/.test(p))
  for (const pid of pids) {
    if (found.size === wanted.size) break
    const inodes = (await socketInodes(pid)).filter((i) => wanted.has(i))
    if (inodes.length === 0) continue
    const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim()
    for (const inode of inodes) found.set(inode, comm)
  }
  return found
}

/** Finds listening ports; keeps what it learned about process names between calls. */
export function createPortScanner(): () => Promise<ListeningPort[]> {
  let names = new Map<string, string>()
  let lastKey = ''
  return async () => {
    const own = new Set(await socketInodes(String(process.pid)))
    const sockets = (await readSockets()).filter((s) => !own.has(s.inode))
    const key = sockets
      .map((s) => s.inode)
      .sort()
      .join(',')
    if (key !== lastKey) {
      names = await owners(new Set(sockets.map((s) => s.inode)))
      lastKey = key
    }
    const seen = new Set<string>()
    const ports: ListeningPort[] = []
    for (const s of sockets.sort((a, b) => a.port - b.port)) {
      const id = `${s.network}/${s.address}/${s.port}`
      if (seen.has(id)) continue
      seen.add(id)
      const port: ListeningPort = { port: s.port, network: s.network, address: s.address }
      const name = names.get(s.inode)
      if (name !== undefined && name !== '') port.process = name.slice(0, 64)
      ports.push(port)
      if (ports.length >= MAX_REPORTED_PORTS) break
    }
    return ports
  }
}
