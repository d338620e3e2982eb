import type { Logger } from 'pino';
import type { Kube } from './kube.js';
import { conditionIs } from './objects.js';
import type { KubeSandboxes } from './sandboxes.js';
import { collectionPath, toSandbox, type KubeObject } from './translate.js';

/** agent-sandbox's label on the members of a warm pool. */
const POOL_MEMBER = 'agents.x-k8s.io/warm-pool-sandbox';

/**
 * Puts Moat's agent into warm pool members as soon as they are Ready and starts its channel (PodMux), held open,
 * so a claim's first exec finds it running and costs no pods/exec at all. It only adds a file in the pod's /tmp:
 * nothing agent-sandbox's controller owns changes. A new leader's watch starts with every current member, so none
 * is missed.
 */
export class PoolWarmer {
  private readonly done = new Set<string>();
  private stop?: () => void;

  constructor(
    private readonly kube: Kube,
    private readonly sandboxes: KubeSandboxes,
    private readonly log: Logger,
  ) {}

  /** The leader runs it (see LeaderElection): several replicas would copy the agent in at once, which works, at a cost. */
  start(): void {
    if (this.stop) return;
    // Without a resourceVersion the watch starts with every current member (ADDED), and again after a gap.
    this.stop = this.kube.watch(
      collectionPath('Sandbox'),
      { labelSelector: POOL_MEMBER },
      (type, obj) => this.onEvent(type, obj as KubeObject),
      () => {},
    );
  }

  private onEvent(type: string, obj: KubeObject) {
    const key = obj.metadata.uid;
    if (type === 'DELETED') return void this.done.delete(key);
    // A claimed sandbox keeps the label: its channel opens on use, never held for a claim that already came.
    const claimed = obj.metadata.ownerReferences?.some((o) => o.kind === 'SandboxClaim');
    if (this.done.has(key) || claimed || obj.metadata.deletionTimestamp || !conditionIs(obj, 'Ready')) return;
    this.done.add(key);
    this.sandboxes.warm(toSandbox(obj, undefined)).catch((err: unknown) => {
      this.done.delete(key); // tried again at its next change
      this.log.warn({ err, sandbox: `${obj.metadata.namespace}/${obj.metadata.name}` }, 'could not put the agent into a warm pool member');
    });
  }

  close(): void {
    this.stop?.();
    this.stop = undefined;
  }
}
