/**
 * The agent's data-plane protocols besides SSH: port forwarding, ping and
 * speed test, each behind the ticket check of serveMeshProtocol and each
 * taking up to MAX_STREAMS_PER_PROTOCOL streams per connection (field case
 * B10: the stock limit of 32 resets the 33rd parallel forward).
 */
import { PING_PROTOCOL, SPEEDTEST_PROTOCOL, TCP_PROTOCOL } from '../netstack/constants.ts'
import type { MeshNode } from '../netstack/node.ts'
import { serveMeshProtocol, type TicketAuthority } from '../netstack/serve.ts'
import type { Logger } from '../sdk/logger.ts'
import { createForwardHandler, type ForwardHandlerInit } from './forward.ts'
import { createPingHandler } from './ping.ts'
import { createSpeedtestHandler } from './speedtest.ts'

export interface MeshServicesInit {
  forward?: ForwardHandlerInit
}

/** Registers the forward, ping and speed test handlers on `node`. */
export async function serveMeshServices(
  node: MeshNode,
  authority: TicketAuthority,
  log: Logger,
  init: MeshServicesInit = {},
): Promise<void> {
  await serveMeshProtocol(
    node,
    TCP_PROTOCOL,
    authority,
    createForwardHandler(init.forward),
    log.child({ component: 'forward' }),
  )
  await serveMeshProtocol(node, PING_PROTOCOL, authority, createPingHandler(), log)
  await serveMeshProtocol(node, SPEEDTEST_PROTOCOL, authority, createSpeedtestHandler(), log)
}
