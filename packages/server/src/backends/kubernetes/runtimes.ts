import { RUNTIME_CLASSES, invalid, type RuntimeClassName } from '@moat/core';
import type { RuntimeInfo } from '../types.js';
import type { Kube } from './kube.js';

/**
 * Moat's runtime classes → the cluster's RuntimeClass objects. `runc` is the nodes' default runtime (no
 * runtimeClassName); `gvisor` is GKE Sandbox's `gvisor`; `microvm` is Kata's (on EKS `kata-fc` for Firecracker,
 * elsewhere often `kata-qemu`). A mapping to null means the node default.
 */
export type RuntimeClassMap = Record<RuntimeClassName, string | null>;

export const DEFAULT_RUNTIME_CLASSES: RuntimeClassMap = { runc: null, gvisor: 'gvisor', microvm: 'kata-qemu' };

/** `gvisor=gvisor,microvm=kata-fc` (MOAT_K8S_RUNTIME_CLASSES) over the defaults; `runc=` keeps the node default. */
export function parseRuntimeClassMap(spec: string | undefined): RuntimeClassMap {
  const map = { ...DEFAULT_RUNTIME_CLASSES };
  for (const term of (spec ?? '').split(',').filter((t) => t.trim())) {
    const m = /^\s*([a-z]+)\s*=\s*([a-z0-9.-]*)\s*$/.exec(term);
    if (!m || !(RUNTIME_CLASSES as readonly string[]).includes(m[1]!)) {
      throw new Error(`runtime class mapping "${term}": use ${RUNTIME_CLASSES.join('|')}=<RuntimeClass name>, comma-separated`);
    }
    map[m[1] as RuntimeClassName] = m[2] || null;
  }
  return map;
}

/** Which of Moat's classes this cluster can run, from its RuntimeClass objects. */
export class ClusterRuntimes {
  readonly info: Record<string, RuntimeInfo> = {};

  constructor(
    private readonly kube: Kube,
    readonly map: RuntimeClassMap,
  ) {}

  /** Reads the cluster's RuntimeClasses; a cluster that hides them (RBAC) leaves the mapped classes unknown, not refused. */
  async refresh(): Promise<void> {
    let present: Set<string> | undefined;
    try {
      const list = await this.kube.get<{ items: { metadata: { name: string } }[] }>('/apis/node.k8s.io/v1/runtimeclasses', 'RuntimeClasses');
      present = new Set(list.items.map((i) => i.metadata.name));
    } catch {
      present = undefined;
    }
    for (const name of RUNTIME_CLASSES) {
      const target = this.map[name];
      if (target === null) this.info[name] = { available: true };
      else if (!present) this.info[name] = { available: true, warning: `RuntimeClass "${target}" could not be listed (RBAC); assumed present` };
      else if (present.has(target)) this.info[name] = { available: true };
      else this.info[name] = { available: false, reason: missing(name, target, present) };
    }
  }

  /** The RuntimeClass for a pod of Moat class (or RuntimeClass name) `given`; refuses one the cluster lacks. */
  async resolve(given: string | undefined): Promise<{ moat: RuntimeClassName; kube: string | null }> {
    const moat = this.moatName(given);
    if (!moat) {
      const known = RUNTIME_CLASSES.map((c) => (this.map[c] ? `${c} (RuntimeClass ${this.map[c]})` : c)).join(', ');
      throw invalid(`spec.podTemplate.spec.runtimeClassName: unknown runtime "${given}"; use one of ${known}`);
    }
    if (!this.info[moat]?.available) await this.refresh(); // installed since the last look?
    const info = this.info[moat];
    if (info && !info.available) throw invalid(`spec.podTemplate.spec.runtimeClassName: ${info.reason}`);
    return { moat, kube: this.map[moat] };
  }

  /** Moat's name for a pod's runtimeClassName (itself a Moat name, a mapped RuntimeClass, or none: runc). */
  moatName(given: string | undefined | null): RuntimeClassName | undefined {
    if (!given) return 'runc';
    if ((RUNTIME_CLASSES as readonly string[]).includes(given)) return given as RuntimeClassName;
    return RUNTIME_CLASSES.find((c) => this.map[c] === given);
  }
}

function missing(name: string, target: string, present: Set<string>): string {
  const have = [...present].sort();
  return (
    `runtime "${name}" needs the RuntimeClass "${target}", which this cluster does not have ` +
    `(it has ${have.length ? have.join(', ') : 'none'}); install it (GKE: a gVisor node pool; EKS: Kata Containers) ` +
    `or map "${name}" to another RuntimeClass with MOAT_K8S_RUNTIME_CLASSES (docs/kubernetes.md)`
  );
}
