/**
 * @moat/gateway: what stands between sandboxes and the network: the egress
 * proxy (egress/proxy.ts), which sandboxes reach through HTTP_PROXY and
 * HTTPS_PROXY, and the API gateway (api/gateway.ts) that calls LLMs and other
 * APIs for them with credentials they never see. Both listen on the
 * sandboxes' service address.
 */
export * from './egress/index.js';
export * from './api/index.js';
