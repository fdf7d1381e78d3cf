/**
 * The coordinator: the control plane of coder-mesh. It serves the HTTP API,
 * keeps users, templates, workspaces and builds in an embedded LevelDB,
 * runs builds through the provisioner, and runs the libp2p relay that
 * agents reserve slots on and clients reach them through.
 *
 * @example
 * ```ts
 * import { startServer } from './coordinator/index.ts'
 *
 * const server = await startServer({ address: '127.0.0.1:0', dataDir: '/tmp/mesh' })
 * console.log(server.url, server.relayAddrs)
 * await server.close()
 * ```
 */
export { createApp, routeTable } from './api.ts'
export { authorize, can, PERMISSIONS } from './rbac.ts'
export type { Action } from './rbac.ts'
export type { AppEnv } from './http.ts'
export type { ProvisionFn } from './builds.ts'
export { openCoordinator, CODER_MESH_BIN } from './coordinator.ts'
export type { Coordinator, CoordinatorInit } from './coordinator.ts'
export { createRelayGater, createRelayPolicy } from './relay.ts'
export type { RelayPolicy } from './relay.ts'
export { runServerCommand, startServer } from './server.ts'
export type { RunningServer, ServerInit } from './server.ts'
