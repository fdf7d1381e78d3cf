/**
 * The coordinator's own STUN responder: where it listens, the URL it hands
 * to agents and clients for WebRTC, and the answer a Binding request gets.
 */
import { randomBytes } from 'node:crypto'
import { createSocket } from 'node:dgram'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../sdk/logger.ts'
import { startCoordinatorStun } from './relay.ts'

const log = createLogger('mesh:test', 'silent')

function bindingRequest(): Buffer {
  const req = Buffer.alloc(20)
  req.writeUInt16BE(0x0001, 0)
  req.writeUInt32BE(0x2112a442, 4)
  randomBytes(12).copy(req, 8)
  return req
}

describe('coordinator STUN', () => {
  it('should hand out a stun: URL at the access URL host that answers Binding requests', async () => {
    const stun = await startCoordinatorStun('0.0.0.0:0', 'http://127.0.0.1:7080', log)
    try {
      const urls = stun.iceServers()
      expect(urls).toEqual([expect.stringMatching(/^stun:127\.0\.0\.1:\d+$/)])
      const port = Number(urls[0]!.split(':')[2])
      const client = createSocket('udp4')
      await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', () => resolve()))
      try {
        const answer = new Promise<Buffer>((resolve) => client.once('message', resolve))
        client.send(bindingRequest(), port, '127.0.0.1')
        const res = await answer
        expect(res.readUInt16BE(0)).toBe(0x0101)
        expect(res.readUInt16BE(26) ^ 0x2112).toBe(client.address().port)
      } finally {
        client.close()
      }
    } finally {
      await stun.close()
    }
  })

  it('should name its own address when it listens on one', async () => {
    const stun = await startCoordinatorStun('127.0.0.1:0', 'https://mesh.example.com', log)
    try {
      expect(stun.iceServers()).toEqual([expect.stringMatching(/^stun:127\.0\.0\.1:\d+$/)])
    } finally {
      await stun.close()
    }
  })

  it('should hand out nothing when off', async () => {
    const stun = await startCoordinatorStun(false, 'http://127.0.0.1:7080', log)
    expect(stun.iceServers()).toEqual([])
    await stun.close()
  })

  it('should refuse a bad address with MESH_BAD_ARGUMENT', async () => {
    for (const bad of ['nonsense', '[::1]:3478', '0.0.0.0:70000']) {
      await expect(startCoordinatorStun(bad, 'http://127.0.0.1:7080', log)).rejects.toMatchObject({
        code: 'MESH_BAD_ARGUMENT',
      })
    }
  })
})
