/**
 * The API groups and versions Moat serves, and the labels it sets: wire
 * format, like the condition reasons (conditions.ts).
 *
 * This module imports nothing: the SDK's generated wire file includes it as it
 * is (scripts/gen-sdk-types.ts).
 */

export const SANDBOX_GROUP = 'agents.x-k8s.io';
export const SANDBOX_VERSION = 'v1alpha1';
export const SANDBOX_API_VERSION = `${SANDBOX_GROUP}/${SANDBOX_VERSION}`;
/** agent-sandbox's newer version; same fields for what Moat serves, so both are accepted and served. */
export const SANDBOX_API_VERSIONS = [SANDBOX_API_VERSION, `${SANDBOX_GROUP}/v1beta1`] as const;

/**
 * SandboxTemplate, SandboxClaim and SandboxWarmPool, shaped like
 * kubernetes-sigs/agent-sandbox's extensions API. Its v1alpha1 and v1beta1
 * differ only in how a claim names its source (sandboxTemplateRef vs
 * warmPoolRef), so Moat accepts both versions and both fields.
 */
export const EXTENSIONS_GROUP = 'extensions.agents.x-k8s.io';
export const EXTENSIONS_API_VERSION = `${EXTENSIONS_GROUP}/v1alpha1`;
export const EXTENSIONS_API_VERSIONS = [EXTENSIONS_API_VERSION, `${EXTENSIONS_GROUP}/v1beta1`] as const;

/** Moat's own API: images, secrets, volumes, backups, users and agents, audit, the gateway and the portal. */
export const MOAT_API_VERSION = 'moat.dev/v1';

/** Labels and annotations Moat sets on sandboxes it makes from templates. */
export const LABELS = {
  template: 'agents.x-k8s.io/sandbox-template',
  claim: 'agents.x-k8s.io/claim',
  /** Present only while a sandbox waits unclaimed in a pool. */
  pool: 'agents.x-k8s.io/warm-pool',
  /** On a claimed sandbox: which pool it came from. */
  adoptedFrom: 'moat.dev/adopted-from-pool',
  builtin: 'moat.dev/builtin',
} as const;
