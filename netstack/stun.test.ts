import { randomBytes } from 'node:crypto'
import { createSocket } from 'node:dgram'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startStunServer, stunBindingResponse, type StunServer } from './stun.ts'

function bindingRequest(transaction: Buffer): Buffer {
  const req = Buffer.alloc(20)
  req.writeUInt16BE(0x0001, 0)
  req.writeUInt16BE(0, 2)
  req.writeUInt32BE(0x2112a442, 4)
  transaction.copy(req, 8)
  return req
}

/** Decodes XOR-MAPPED-ADDRESS from a Binding success response. */
function mappedAddress(res: Buffer): { address: string; port: number } {
  expect(res.readUInt16BE(0)).toBe(0x0101)
  expect(res.readUInt16BE(20)).toBe(0x0020)
  const port = res.readUInt16BE(26) ^ 0x2112
  const octets = [0, 1, 2, 3].map((i) => res[28 + i]! ^ res[4 + i]!)
  return { address: octets.join('.'), port }
}

describe('STUN binding server', () => {
  let server: StunServer

  beforeAll(async () => {
    server = await startStunServer({ host: '127.0.0.1' })
  })

  afterAll(async () => {
    await server?.close()
  })

  it('should answer a Binding request with the address and port it came from', async () => {
    const client = createSocket('udp4')
    await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', () => resolve()))
    try {
      const transaction = randomBytes(12)
      const answer = new Promise<Buffer>((resolve) => client.once('message', resolve))
      client.send(bindingRequest(transaction), server.port, '127.0.0.1')
      const res = await answer
      expect(res.subarray(8, 20).equals(transaction)).toBe(true)
      expect(res.readUInt16BE(2)).toBe(res.length - 20)
      expect(mappedAddress(res)).toEqual({ address: '127.0.0.1', port: client.address().port })
    } finally {
      client.close()
    }
  })

  it('should ignore what is not a Binding request', () => {
    const from = { address: '10.0.0.1', family: 'IPv4' as const, port: 5000, size: 0 }
    expect(stunBindingResponse(Buffer.from('hello'), from)).toBeUndefined()
    const wrongCookie = bindingRequest(randomBytes(12))
    wrongCookie.writeUInt32BE(1, 4)
    expect(stunBindingResponse(wrongCookie, from)).toBeUndefined()
    const response = bindingRequest(randomBytes(12))
    response.writeUInt16BE(0x0101, 0)
    expect(stunBindingResponse(response, from)).toBeUndefined()
    expect(mappedAddress(stunBindingResponse(bindingRequest(randomBytes(12)), from)!)).toEqual({
      address: '10.0.0.1',
      port: 5000,
    })
  })
})
