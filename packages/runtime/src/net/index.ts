/**
 * Network isolation for sandboxes: one network namespace per sandbox, a
 * default-deny nftables table on the host, and the /31 address leases.
 *
 * A sandbox reaches exactly one place, TCP to the service ports of the
 * service address (default 10.200.0.1), where the egress proxy (and the
 * gateway) listen; give it `HTTP_PROXY`/`HTTPS_PROXY`
 * `http://<serviceAddress>:<proxyPort>` (and lower-case variants). Everything
 * else, other sandboxes, the host's other addresses and ports, link-local,
 * private and loopback ranges, IPv6, is refused on the host. Nothing from the
 * network can reach a sandbox.
 *
 * See SandboxNetworks for the lifecycle calls and ipam.ts for leases.
 */
export * from './ipam.js';
export * from './keys.js';
export * from './networks.js';
export { renderRuleset, type RulesetInput } from './ruleset.js';
