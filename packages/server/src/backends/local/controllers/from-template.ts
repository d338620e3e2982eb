import { createHash } from 'node:crypto';
import { LABELS, invalid, type SandboxClaim, type SandboxSpec, type SandboxTemplate } from '@moat/core';

export interface SandboxShape {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: SandboxSpec;
}

/** Identifies a template's sandbox-making parts, so pools can tell stale members (updateStrategy Recreate). */
export function templateHash(t: SandboxTemplate): string {
  const { podTemplate, volumeClaimTemplates, secrets } = t.spec;
  return createHash('sha256').update(JSON.stringify({ podTemplate, volumeClaimTemplates, secrets })).digest('hex').slice(0, 16);
}

/** A sandbox as the template makes it, with a claim's additions under the template's injection policies. */
export function sandboxFromTemplate(t: SandboxTemplate, claim?: SandboxClaim): SandboxShape {
  const pod = structuredClone(t.spec.podTemplate);
  const container = pod.spec.containers[0]!;
  const extra = claim?.spec.additionalPodMetadata;
  const labels: Record<string, string> = { ...pod.metadata?.labels, ...extra?.labels, [LABELS.template]: t.metadata.name };
  if (claim) labels[LABELS.claim] = claim.metadata.name;
  const annotations = { ...pod.metadata?.annotations, ...extra?.annotations };
  if (claim?.spec.env?.length) container.env = mergeEnv(t, claim);
  const volumes = claim?.spec.volumeClaimTemplates?.length ? claimVolumes(t, claim) : t.spec.volumeClaimTemplates;
  const { egressPolicy, egressLimits, secrets, idlePolicy } = t.spec;
  const spec: SandboxSpec = {
    podTemplate: pod,
    ...(volumes ? { volumeClaimTemplates: structuredClone(volumes) } : {}),
    ...(egressPolicy ? { egressPolicy: structuredClone(egressPolicy) } : {}),
    ...(egressLimits ? { egressLimits: { ...egressLimits } } : {}),
    ...(secrets ? { secrets: structuredClone(secrets) } : {}),
    ...(idlePolicy ? { idlePolicy: { ...idlePolicy } } : {}),
  };
  return { labels, annotations, spec };
}

/**
 * Why a claim cannot take a pooled sandbox, or undefined when it can. A pooled
 * sandbox is already running: its main command has its environment and its
 * volume has its size, so a claim that changes either needs a fresh one.
 */
export function coldStartReason(t: SandboxTemplate, claim: SandboxClaim): string | undefined {
  const container = t.spec.podTemplate.spec.containers[0]!;
  const hasMain = Boolean(container.command?.length || container.args?.length);
  if (claim.spec.env?.length && hasMain) return 'the claim sets environment variables and the template runs a main command, which must start with them';
  if (claim.spec.volumeClaimTemplates?.length && JSON.stringify(claimVolumes(t, claim)) !== JSON.stringify(t.spec.volumeClaimTemplates)) {
    return 'the claim asks for a different volume than the template';
  }
  return undefined;
}

function mergeEnv(t: SandboxTemplate, claim: SandboxClaim) {
  const policy = t.spec.envVarsInjectionPolicy ?? 'Disallowed';
  const base = t.spec.podTemplate.spec.containers[0]!.env ?? [];
  if (policy === 'Disallowed') {
    throw invalid(`spec.env: template "${t.metadata.name}" does not allow claims to set environment variables (envVarsInjectionPolicy: Disallowed)`);
  }
  const merged = new Map(base.map((e) => [e.name, e.value ?? '']));
  for (const e of claim.spec.env ?? []) {
    if (policy === 'Allowed' && merged.has(e.name)) {
      throw invalid(`spec.env: "${e.name}" is set by template "${t.metadata.name}" and its envVarsInjectionPolicy (Allowed) does not let claims override it`);
    }
    merged.set(e.name, e.value);
  }
  return [...merged].map(([name, value]) => ({ name, value }));
}

function claimVolumes(t: SandboxTemplate, claim: SandboxClaim) {
  const policy = t.spec.volumeClaimTemplatesPolicy ?? 'Disallowed';
  const wanted = claim.spec.volumeClaimTemplates ?? [];
  if (policy === 'Disallowed') {
    throw invalid(`spec.volumeClaimTemplates: template "${t.metadata.name}" does not allow claims to set volumes (volumeClaimTemplatesPolicy: Disallowed)`);
  }
  const own = t.spec.volumeClaimTemplates ?? [];
  if (policy === 'Allowed' && wanted.some((w) => own.some((o) => o.metadata.name === w.metadata.name))) {
    throw invalid(
      `spec.volumeClaimTemplates: template "${t.metadata.name}" defines that volume and its volumeClaimTemplatesPolicy (Allowed) does not let claims override it`,
    );
  }
  return wanted;
}

/**
 * A pooled sandbox's running spec, with what a claim may still change: its
 * environment (for execs) and its egress policy and limits (the proxy reads
 * them at every connection).
 */
export function adoptedSpec(member: SandboxSpec, target: SandboxSpec): SandboxSpec {
  const spec = structuredClone(member);
  const env = target.podTemplate.spec.containers[0]!.env;
  if (env) spec.podTemplate.spec.containers[0]!.env = env;
  delete spec.egressPolicy;
  delete spec.egressLimits;
  if (target.egressPolicy) spec.egressPolicy = target.egressPolicy;
  if (target.egressLimits) spec.egressLimits = target.egressLimits;
  return spec;
}
