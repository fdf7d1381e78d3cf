import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream } from '@libp2p/interface'
import { execa } from 'execa'
import { createHash, randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { STREAM_WINDOW_BYTES } from './constants.ts'
import { sendUntil } from './speedtest.ts'
import { createMeshNode, type MeshNode } from './node.ts'
import { toDuplex } from './stream-duplex.ts'

const PROTOCOL = '/coder-mesh-test/sink/1.0.0'
const MiB = 1024 * 1024

describe('toDuplex', () => {
  let a: MeshNode
  let b: MeshNode
  const inbound: Stream[] = []

  beforeAll(async () => {
    a = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    b = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [] })
    await a.handle(PROTOCOL, (stream) => {
      inbound.push(stream)
    })
  })

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()])
  })

  async function pair(): Promise<{ sender: Stream; receiver: Stream }> {
    const conn = await b.dial(a.getMultiaddrs()[0]!)
    const sender = await conn.newStream(PROTOCOL)
    sender.send(new Uint8Array(1))
    for (let i = 0; i < 100 && inbound.length === 0; i++)
      await new Promise((r) => setTimeout(r, 20))
    return { sender, receiver: inbound.shift()! }
  }

  it('should hold a fast sender to about one window while the reader keeps stalling', async () => {
    const { sender, receiver } = await pair()
    const duplex = toDuplex(receiver)
    const writer = toDuplex(sender)
    const total = 256 * MiB
    const block = Buffer.alloc(MiB)
    let written = 0
    const pump = (): void => {
      while (written < total) {
        written += block.length
        if (!writer.write(block)) {
          writer.once('drain', pump)
          return
        }
      }
      writer.end()
    }
    pump()

    // Each stall lets the stream's buffer fill, and each resume must not
    // reopen the window while the reader is still paused.
    let received = 0
    let nextStall = 8 * MiB
    let peak = 0
    duplex.on('data', (chunk: Buffer) => {
      received += chunk.length
      peak = Math.max(peak, receiver.readBufferLength)
      if (received >= nextStall) {
        nextStall += 8 * MiB
        duplex.pause()
        setTimeout(() => duplex.resume(), 20)
      }
    })
    await new Promise<void>((resolve, reject) => {
      duplex.on('end', resolve)
      duplex.on('error', reject)
    })

    expect(received).toBe(total + 1)
    expect(peak).toBeLessThanOrEqual(STREAM_WINDOW_BYTES + MiB)
  }, 120_000)

  /** Everything `receiver` gets after pair()'s first byte, and how many messages it came in. */
  function collect(receiver: Stream): Promise<{ bytes: Buffer; messages: number }> {
    const chunks: Buffer[] = []
    let messages = 0
    let first = true
    receiver.addEventListener('message', (evt) => {
      let data = Buffer.from(evt.data.subarray())
      if (first) {
        first = false
        data = data.subarray(1)
        if (data.length === 0) return
      }
      messages++
      chunks.push(data)
    })
    return new Promise((resolve) => {
      receiver.addEventListener('remoteCloseWrite', () =>
        resolve({ bytes: Buffer.concat(chunks), messages }),
      )
    })
  }

  it('should send the writes of one event-loop turn as one message', async () => {
    const { sender, receiver } = await pair()
    const got = collect(receiver)
    const writer = toDuplex(sender)
    const parts = Array.from({ length: 32 }, () => randomBytes(2048))
    for (const part of parts) writer.write(part)
    writer.end()

    const { bytes, messages } = await got
    expect(bytes.equals(Buffer.concat(parts))).toBe(true)
    // One Yamux frame for 32 writes: the per-frame work on both ends (a
    // Noise message, events, a window update) is paid once.
    expect(messages).toBe(1)
  })

  it('should keep every byte in order across batches larger than one', async () => {
    const { sender, receiver } = await pair()
    const got = collect(receiver)
    const writer = toDuplex(sender)
    const sent = createHash('sha256')
    let total = 0
    for (let i = 0; i < 40; i++) {
      // Uneven sizes, so batch edges fall inside writes.
      const part = randomBytes(100_000 + i * 997)
      sent.update(part)
      total += part.length
      if (!writer.write(part)) await new Promise((r) => writer.once('drain', r))
    }
    writer.end()

    const { bytes } = await got
    expect(bytes.length).toBe(total)
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(sent.digest('hex'))
  })

  it('should hold a writer that never yields to what the stream can send', async () => {
    const { sender, receiver } = await pair()
    let received = 0
    receiver.addEventListener('message', (evt) => {
      received += evt.data.byteLength
    })
    const writer = toDuplex(sender)

    // As the speed test sends: write until a deadline, waiting only when
    // write() says so. Every 'drain' a window update brings is no proof of
    // room; taking it as one let such a writer queue hundreds of MB in the
    // stream while the link carried a third of it.
    const sent = await sendUntil(writer, performance.now() + 500)
    const backlog = sender.writeBufferLength + writer.writableLength
    writer.end()
    await new Promise<void>((resolve) =>
      receiver.addEventListener('remoteCloseWrite', () => resolve()),
    )

    expect(backlog).toBeLessThan(MiB)
    expect(received).toBe(sent + 1)
  })

  it('should send a lone small write without waiting for more', async () => {
    const { sender, receiver } = await pair()
    const writer = toDuplex(sender)
    const arrived = new Promise<string>((resolve) => {
      receiver.addEventListener('message', (evt) => {
        const text = Buffer.from(evt.data.subarray()).toString()
        if (text.includes('ls\n')) resolve(text)
      })
    })
    // An interactive keystroke: nothing follows it, and the stream stays open.
    writer.write('ls\n')
    expect(await arrived).toContain('ls\n')
    writer.destroy()
  })

  it('should deliver all a paused stream holds when both ends have closed', async () => {
    const { sender, receiver } = await pair()
    const reader = toDuplex(receiver)
    const writer = toDuplex(sender)
    const payload = randomBytes(512 * 1024)
    const first = Buffer.alloc(1)

    // Nobody reads yet: the duplex fills and pauses the stream, which then
    // holds the rest. Both ends finish writing, so the stream closes while
    // it still holds data (a half-closed request, answered to a slow reader).
    reader.pause()
    writer.end(payload)
    reader.end()
    for (let i = 0; i < 200 && receiver.status !== 'closed'; i++) {
      await new Promise((r) => setTimeout(r, 20))
    }
    expect(receiver.status).toBe('closed')
    expect(receiver.readBufferLength).toBeGreaterThan(0)

    const chunks: Buffer[] = []
    for await (const chunk of reader) chunks.push(chunk as Buffer)
    const got = Buffer.concat(chunks)
    // pair() sent one byte before the payload.
    expect(got.length).toBe(payload.length + first.length)
    expect(got.subarray(1).equals(payload)).toBe(true)
  })

  it('should report an aborted stream as an error, never as a clean end', async () => {
    const { receiver } = await pair()
    const duplex = toDuplex(receiver)
    const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() })
    const piped = pipeline(duplex, sink).then(
      () => 'end',
      () => 'error',
    )
    await new Promise((r) => setTimeout(r, 50))
    receiver.abort(new Error('read buffer overflow'))
    expect(await piped).toBe('error')
  })
})

/** A peer in its own process: dials ADDR, opens PROTOCOL, sends 1 MiB and waits to be killed. */
const DYING_PEER = `
const { generateKeyPair } = await import('@libp2p/crypto/keys')
const { multiaddr } = await import('@multiformats/multiaddr')
const { createMeshNode } = await import(process.env.NODE_TS)
const node = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [] })
const connection = await node.dial(multiaddr(process.env.ADDR))
const stream = await connection.newStream(process.env.PROTOCOL)
stream.send(new Uint8Array(1024 * 1024))
console.log('sent')
setInterval(() => {}, 1000)
`

describe('toDuplex when the connection goes away', () => {
  it('should fail, not end, when the peer process dies mid-transfer', async () => {
    const node = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    try {
      const outcome = new Promise<string>((resolve) => {
        void node.handle(PROTOCOL, (stream) => {
          const reader = toDuplex(stream)
          reader.on('end', () => resolve('end'))
          reader.on('error', (err: Error) => resolve(`error: ${err.message}`))
          reader.resume()
        })
      })
      const peer = execa(
        process.execPath,
        ['--disable-warning=ExperimentalWarning', '--input-type=module', '-e', DYING_PEER],
        {
          env: {
            NODE_TS: fileURLToPath(new URL('./node.ts', import.meta.url)),
            ADDR: node.getMultiaddrs()[0]!.toString(),
            PROTOCOL,
          },
          cwd: fileURLToPath(new URL('..', import.meta.url)),
          reject: false,
        },
      )
      await new Promise<void>((resolve) => {
        peer.stdout!.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('sent')) resolve()
        })
      })
      await new Promise((r) => setTimeout(r, 200))

      // Killed: the kernel closes its TCP connection, with no FIN for the
      // stream. A clean end here would pass a cut-off transfer off as whole.
      peer.kill('SIGKILL')
      await peer

      expect(await outcome).toMatch(/^error: /)
    } finally {
      await node.stop()
    }
  })
})
