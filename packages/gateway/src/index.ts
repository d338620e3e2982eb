/**
 * @moat/gateway: what stands between sandboxes and the network. For now the
 * egress proxy (see egress/proxy.ts), which sandboxes reach at
 * `http://<service address>:<port>` through HTTP_PROXY and HTTPS_PROXY.
 */
export * from './egress/index.js';
