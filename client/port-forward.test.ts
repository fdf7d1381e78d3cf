import { describe, expect, it } from 'vitest'
import { isMeshError } from '../sdk/errors.ts'
import { formatHostPort, parseForwardSpec, parseForwardSpecs } from './port-forward.ts'

describe('parseForwardSpec', () => {
  it.each([
    ['8080', { host: '127.0.0.1', port: 8080, remote: 8080 }],
    ['18080:80', { host: '127.0.0.1', port: 18080, remote: 80 }],
    ['0:5432', { host: '127.0.0.1', port: 0, remote: 5432 }],
    ['0.0.0.0:8080:80', { host: '0.0.0.0', port: 8080, remote: 80 }],
    ['localhost:8080:80', { host: 'localhost', port: 8080, remote: 80 }],
    ['[::1]:8080:80', { host: '::1', port: 8080, remote: 80 }],
    [' 65535:1 ', { host: '127.0.0.1', port: 65535, remote: 1 }],
  ])('should read %j', (value, expected) => {
    expect(parseForwardSpec(value)).toEqual(expected)
  })

  it.each([
    ['', /LOCAL "" is not a port number/],
    ['web', /LOCAL "web" is not a port number/],
    ['8080:', /REMOTE "" is not a port number/],
    ['8080:0', /REMOTE must be 1-65535/],
    ['0', /REMOTE must be 1-65535/],
    ['70000:80', /LOCAL must be at most 65535/],
    ['80:-1', /REMOTE "-1" is not a port number/],
    ['1e3:80', /LOCAL "1e3" is not a port number/],
    [':8080:80', /the address is empty/],
    ['::1:8080:80', /brackets/],
    ['[::1:8080:80', /unclosed \[/],
    ['[127.0.0.1]:8080:80', /not an IPv6 address/],
    ['[::1]8080:80', /a port must follow the address/],
    ['[::1]:8080', /give both LOCAL and REMOTE/],
    ['47401:47312:1', /the address "47401" is a bare number/],
  ])('should refuse %j with MESH_BAD_ARGUMENT', (value, message) => {
    let error: unknown
    try {
      parseForwardSpec(value)
    } catch (err) {
      error = err
    }
    expect(isMeshError(error) && error.code).toBe('MESH_BAD_ARGUMENT')
    expect((error as Error).message).toMatch(message)
    expect((error as Error).message).toMatch(/use LOCAL:REMOTE or ADDR:LOCAL:REMOTE/)
  })
})

describe('parseForwardSpecs', () => {
  it('should refuse an empty list and a local address given twice', () => {
    expect(() => parseForwardSpecs([])).toThrow(/Nothing to forward/)
    expect(() => parseForwardSpecs(['8080:80', '127.0.0.1:8080:81'])).toThrow(/given twice/)
  })

  it('should allow port 0 more than once and one port on two addresses', () => {
    expect(parseForwardSpecs(['0:80', '0:81', '8080:80', '0.0.0.0:8080:81'])).toHaveLength(4)
  })
})

describe('formatHostPort', () => {
  it('should bracket IPv6 addresses only', () => {
    expect(formatHostPort('127.0.0.1', 80)).toBe('127.0.0.1:80')
    expect(formatHostPort('::1', 80)).toBe('[::1]:80')
    expect(formatHostPort('localhost', 80)).toBe('localhost:80')
  })
})
