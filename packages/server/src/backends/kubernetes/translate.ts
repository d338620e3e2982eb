/**
 * agent-sandbox's objects as the cluster holds them ↔ Moat's API objects. Pure functions: the shapes already
 * match field for field (Moat's API is agent-sandbox's), so this fills in what Moat's answers add (a phase,
 * Moat's runtime class name, the claim label) and refuses the Moat fields this backend cannot enforce yet.
 */
import {
  CONDITION,
  EXTENSIONS_API_VERSION,
  LABELS,
  REASON,
  SANDBOX_API_VERSION,
  badRequest,
  type Condition,
  type ExtensionKind,
  type ObjectMeta,
  type Sandbox,
  type SandboxPhase,
  type SandboxSpec,
  MoatError,
} from '@moat/core';

/** A Kubernetes object as read (the fields Moat looks at). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: Omit<ObjectMeta, 'generation'> & {
    generation?: number;
    deletionTimestamp?: string;
    ownerReferences?: { kind: string; name: string; uid: string; controller?: boolean }[];
  };
  spec: Record<string, unknown>;
  status?: Record<string, unknown>;
}

export interface KubeCondition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
}

/** Where each kind lives in the Kubernetes API (agent-sandbox's groups; v1alpha1 is the shape Moat's API serves). */
export const RESOURCES = {
  Sandbox: { group: 'agents.x-k8s.io', plural: 'sandboxes' },
  SandboxTemplate: { group: 'extensions.agents.x-k8s.io', plural: 'sandboxtemplates' },
  SandboxClaim: { group: 'extensions.agents.x-k8s.io', plural: 'sandboxclaims' },
  SandboxWarmPool: { group: 'extensions.agents.x-k8s.io', plural: 'sandboxwarmpools' },
} as const;
export type Kind = keyof typeof RESOURCES;

export function collectionPath(kind: Kind, namespace?: string, version = 'v1alpha1'): string {
  const r = RESOURCES[kind];
  return `/apis/${r.group}/${version}${namespace ? `/namespaces/${encodeURIComponent(namespace)}` : ''}/${r.plural}`;
}

export const objectPath = (kind: Kind, namespace: string, name: string, version = 'v1alpha1') =>
  `${collectionPath(kind, namespace, version)}/${encodeURIComponent(name)}`;

/** Spec fields of Moat's that need Moat's own enforcement on the node (egress proxy, gateway, idle reclaim). */
const HOST_ONLY_FIELDS = ['egressPolicy', 'egressLimits', 'secrets', 'idlePolicy', 'ttlSeconds'] as const;

/** Refuses what this backend would silently ignore; `field` prefixes the message ("spec"). */
export function refuseHostOnly(spec: Record<string, unknown>, field: string): void {
  const given = HOST_ONLY_FIELDS.filter((f) => spec[f] !== undefined);
  if (given.length) {
    throw new MoatError(
      501,
      'NotImplemented',
      `${field}.${given[0]} is not enforced by the kubernetes backend yet; on a cluster, restrict egress with the SandboxTemplate's networkPolicy (docs/kubernetes.md)`,
      { field: `${field}.${given[0]}` },
    );
  }
}

const condition = (c: KubeCondition): Condition => ({
  type: c.type,
  status: c.status,
  reason: c.reason ?? '',
  message: c.message ?? '',
  lastTransitionTime: c.lastTransitionTime ?? '',
});

const find = (conds: KubeCondition[], type: string) => conds.find((c) => c.type === type);

/** Moat's phase from agent-sandbox's conditions (it has none of its own). */
export function phaseOf(obj: KubeObject): SandboxPhase {
  const conds = (obj.status?.conditions ?? []) as KubeCondition[];
  if (obj.metadata.deletionTimestamp) return 'Terminating';
  // Before Finished: the pod a suspension stopped has finished too.
  if ((obj.spec.replicas as number | undefined) === 0) return 'Hibernated';
  if (find(conds, 'Ready')?.status === 'True') return 'Running';
  if (find(conds, 'Finished')?.status === 'True') return 'Failed';
  return 'Pending';
}

/** The pod behind a sandbox: its own name, or the warm pool member's it adopted. */
export const podName = (obj: KubeObject) => obj.metadata.annotations?.['agents.x-k8s.io/pod-name'] ?? obj.metadata.name;

/** An agent-sandbox Sandbox → Moat's Sandbox; `runtime`: Moat's name for its pod's runtimeClassName. */
export function toSandbox(obj: KubeObject, runtime: string | undefined): Sandbox {
  const conds = ((obj.status?.conditions ?? []) as KubeCondition[]).map(condition);
  const phase = phaseOf(obj);
  if (phase === 'Hibernated' && !conds.some((c) => c.type === CONDITION.Hibernated)) {
    conds.push({
      type: CONDITION.Hibernated,
      status: 'True',
      reason: REASON.Hibernated,
      message: 'stopped with its volumes kept; exec and file calls wake it',
      lastTransitionTime: '',
    });
  }
  const claim = obj.metadata.ownerReferences?.find((o) => o.kind === 'SandboxClaim')?.name;
  const labels = { ...(obj.metadata.labels ?? {}), ...(claim ? { [LABELS.claim]: claim } : {}) };
  const spec = obj.spec as unknown as SandboxSpec;
  const podIPs = (obj.status?.podIPs ?? []) as string[];
  return {
    apiVersion: SANDBOX_API_VERSION,
    kind: 'Sandbox',
    metadata: {
      name: obj.metadata.name,
      namespace: obj.metadata.namespace,
      uid: obj.metadata.uid,
      creationTimestamp: obj.metadata.creationTimestamp,
      resourceVersion: obj.metadata.resourceVersion,
      ...(Object.keys(labels).length ? { labels } : {}),
      ...(obj.metadata.annotations ? { annotations: obj.metadata.annotations } : {}),
    },
    spec,
    status: {
      phase,
      conditions: conds,
      ...(runtime ? { runtimeClassName: runtime } : {}),
      ...(podIPs[0] ? { network: { address: podIPs[0], proxy: '' } } : {}),
    },
  };
}

/** Moat's ObjectInput → the body Kubernetes stores; Moat's read-only echoes (uid, resourceVersion...) are dropped. */
export function toKube(kind: Kind, namespace: string, input: { metadata: Record<string, unknown>; spec: unknown }, version = 'v1alpha1') {
  const m = input.metadata;
  const metadata: Record<string, unknown> = { namespace };
  for (const k of ['name', 'generateName', 'labels', 'annotations'] as const) if (m[k] !== undefined) metadata[k] = m[k];
  if (m.namespace !== undefined && m.namespace !== namespace) {
    throw badRequest(`metadata.namespace "${String(m.namespace)}" does not match the namespace in the path "${namespace}"`);
  }
  return { apiVersion: `${RESOURCES[kind].group}/${version}`, kind, metadata, spec: input.spec };
}

/** A template, claim or pool as Moat's API answers: the cluster's object, in Moat's version, status always there. */
export function toExtension<T>(kind: ExtensionKind, obj: KubeObject): T {
  const status = (obj.status ?? {}) as Record<string, unknown>;
  const conditions = ((status.conditions ?? []) as KubeCondition[]).map(condition);
  return {
    apiVersion: EXTENSIONS_API_VERSION,
    kind,
    metadata: { ...withoutManagedFields(obj.metadata), generation: obj.metadata.generation ?? 1 },
    spec: obj.spec,
    status: {
      ...status,
      conditions,
      ...(kind === 'SandboxWarmPool' ? { replicas: status.replicas ?? 0, readyReplicas: status.readyReplicas ?? 0, selector: status.selector ?? '' } : {}),
    },
  } as T;
}

/** Server-side apply's bookkeeping is Kubernetes' own: `kubectl get` hides it too. */
function withoutManagedFields<M extends object>(m: M): M {
  const { managedFields: _drop, ...rest } = m as M & { managedFields?: unknown };
  return rest as M;
}
