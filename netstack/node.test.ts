import { describe, expect, it } from 'vitest'
import { iceServersFromEnv, meshWebrtc, webrtcFromEnv } from './node.ts'

describe('WebRTC settings', () => {
  it('should read CODER_MESH_ICE_SERVERS: URLs, none/off, or unset', () => {
    expect(iceServersFromEnv({})).toBeUndefined()
    expect(iceServersFromEnv({ CODER_MESH_ICE_SERVERS: '  ' })).toBeUndefined()
    expect(iceServersFromEnv({ CODER_MESH_ICE_SERVERS: 'none' })).toBe('off')
    expect(iceServersFromEnv({ CODER_MESH_ICE_SERVERS: 'OFF' })).toBe('off')
    expect(iceServersFromEnv({ CODER_MESH_ICE_SERVERS: 'stun:a:1, stun:b:2 stun:c:3' })).toEqual([
      'stun:a:1',
      'stun:b:2',
      'stun:c:3',
    ])
    expect(webrtcFromEnv({ CODER_MESH_ICE_SERVERS: 'none' })).toBeUndefined()
  })

  it("should use the coordinator's servers unless the environment overrides them", () => {
    const answer: { iceServers?: string[] } = {}
    const fromCoordinator = meshWebrtc(() => answer.iceServers, {})
    if (fromCoordinator === false) throw new Error('WebRTC should be on')
    const servers = fromCoordinator.iceServers as () => string[]
    expect(servers()).toEqual([])
    answer.iceServers = ['stun:10.0.0.1:3478']
    // Read at each use: a later answer applies without a new node.
    expect(servers()).toEqual(['stun:10.0.0.1:3478'])

    expect(meshWebrtc(() => answer.iceServers, { CODER_MESH_ICE_SERVERS: 'stun:x:1' })).toEqual({
      iceServers: ['stun:x:1'],
    })
    expect(meshWebrtc(() => answer.iceServers, { CODER_MESH_ICE_SERVERS: 'none' })).toBe(false)
  })
})
