import {
  CONDITION,
  LABELS,
  MoatError,
  REASON,
  type Condition,
  type ConditionReason,
  type Sandbox,
  type SandboxSpec,
  type SandboxTemplate,
  type SandboxWarmPool,
  type SandboxWarmPoolSpec,
} from '@moat/core';
import type { Logger } from 'pino';
import type { Store } from '../../../store/store.js';
import { Requeue } from '../../../util/requeue.js';
import { isReady } from './conditions.js';
import { adoptedSpec, sandboxFromTemplate, templateHash, type SandboxShape } from './from-template.js';
import { ObjectController, type ObjectInput } from './objects.js';

const HASH_ANNOTATION = 'moat.dev/template-hash';
const MAX_BACKOFF_MS = 60_000;
const REFILL_DELAY_MS = 100;
const MAX_REFILL_DELAY_MS = 1000;

const condition = (status: Condition['status'], reason: ConditionReason, message: string): Condition => ({
  type: CONDITION.Ready,
  status,
  reason,
  message,
  lastTransitionTime: new Date().toISOString(),
});

/** What pools do to sandboxes (the sandbox controller). */
export interface PoolSandboxes {
  create(namespace: string, input: ObjectInput & { spec: SandboxSpec }, opts: { internal: true }): Promise<Sandbox>;
  delete(namespace: string, name: string, wait?: boolean): Promise<unknown>;
  list(namespace?: string, labelSelector?: string): Promise<Sandbox[]>;
  adopt(
    member: Sandbox,
    to: { name: string; labels: Record<string, string>; annotations: Record<string, string>; spec: SandboxSpec },
  ): Promise<Sandbox | undefined>;
  /** The watch on sandboxes: every change, by uid. */
  onChange(listener: (uid: string) => void): void;
}

/** The templates pools and claims make sandboxes from (the template controller). */
export interface Templates {
  resolve(namespace: string, name: string): Promise<SandboxTemplate | undefined>;
  onChange(listener: (t: { namespace: string; name: string }) => void): void;
}

/**
 * SandboxWarmPools: keep `replicas` ready, unclaimed sandboxes of a template.
 * Members are ordinary sandboxes labelled with the pool; nobody can exec into
 * them until a claim takes one, and a taken sandbox never returns to a pool.
 */
export class WarmPoolController extends ObjectController<SandboxWarmPool> {
  /** Members promised to a claim that is adopting them right now. */
  private readonly reserved = new Set<string>();
  private readonly backoff = new Map<string, { failures: number; until: number }>();
  private readonly refills = new Map<string, { timer: NodeJS.Timeout; first: number }>();
  /** Member uid → its pool's uid, so a member that is gone still tells which pool must refill. */
  private readonly memberOf = new Map<string, string>();
  /** Pools backing off after failures are looked at again when the backoff ends. */
  private readonly requeue = new Requeue((uid) => this.reconcileUid(uid));
  private stopped = false;

  constructor(
    store: Store,
    private readonly sandboxes: PoolSandboxes,
    private readonly templates: Templates,
    private readonly log: Logger,
  ) {
    super(store, 'SandboxWarmPool', 'sandbox warm pool');
    templates.onChange(({ namespace, name }) => void this.reconcileWhere(namespace, (p) => p.spec.sandboxTemplateRef.name === name));
    // A member that starts, fails, is taken or goes: its pool converges soon (refills, reports readiness).
    sandboxes.onChange((uid) => {
      const pool = this.memberOf.get(uid);
      if (pool) this.refillSoon(pool);
    });
  }

  stop(): void {
    this.stopped = true;
    this.requeue.stop();
    for (const { timer } of this.refills.values()) clearTimeout(timer);
  }

  protected validate(_namespace: string, spec: SandboxWarmPoolSpec): SandboxWarmPoolSpec {
    return spec;
  }

  protected initialStatus() {
    return { replicas: 0, readyReplicas: 0, selector: '', conditions: [] };
  }

  protected override async present(pool: SandboxWarmPool): Promise<SandboxWarmPool> {
    const members = await this.members(pool);
    return {
      ...pool,
      status: {
        ...pool.status,
        replicas: members.length,
        readyReplicas: members.filter((m) => isReady(m.status)).length,
        selector: `${LABELS.pool}=${pool.metadata.name}`,
      },
    };
  }

  protected override async changed(pool: SandboxWarmPool): Promise<void> {
    this.backoff.delete(pool.metadata.uid);
    void this.reconcile(pool);
  }

  protected override async deleting(pool: SandboxWarmPool, wait: boolean): Promise<void> {
    await this.serial.run(pool.metadata.uid, async () => {
      await Promise.all((await this.members(pool)).map((m) => this.remove(m, wait)));
    });
  }

  /** Ready pools of a template in a namespace, for claims that do not name one. */
  async poolsFor(namespace: string, template: string): Promise<SandboxWarmPool[]> {
    const pools = (await this.store.listObjects('SandboxWarmPool', namespace)) as unknown as SandboxWarmPool[];
    return pools.filter((p) => p.spec.sandboxTemplateRef.name === template);
  }

  async byName(namespace: string, name: string): Promise<SandboxWarmPool | undefined> {
    return this.find(namespace, name);
  }

  /**
   * Give a ready member to a claim, or undefined if the pool has none. Each
   * member is reserved for one claimer at a time and the store's adoption is
   * conditional, so concurrent claims never share a sandbox.
   */
  async take(pool: SandboxWarmPool, target: SandboxShape & { name: string }): Promise<Sandbox | undefined> {
    for (const member of await this.members(pool)) {
      const uid = member.metadata.uid;
      if (!isReady(member.status) || this.reserved.has(uid)) continue;
      this.reserved.add(uid);
      try {
        const adopted = await this.sandboxes.adopt(member, {
          name: target.name,
          labels: target.labels,
          annotations: { ...target.annotations, [LABELS.adoptedFrom]: pool.metadata.name },
          spec: adoptedSpec(member.spec, target.spec),
        });
        if (adopted) {
          this.refillSoon(pool.metadata.uid);
          return adopted;
        }
      } finally {
        this.reserved.delete(uid);
      }
    }
    return undefined;
  }

  /**
   * Converge shortly after a take or a member's change rather than at once: starting sandboxes is
   * CPU-heavy, and during a burst of claims the claimers should get the CPU.
   */
  private refillSoon(uid: string): void {
    if (this.stopped) return;
    const pending = this.refills.get(uid);
    const first = pending?.first ?? Date.now();
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(
      () => {
        this.refills.delete(uid);
        void this.reconcileUid(uid);
      },
      Math.max(0, Math.min(REFILL_DELAY_MS, first + MAX_REFILL_DELAY_MS - Date.now())),
    );
    this.refills.set(uid, { timer, first });
  }

  /**
   * Every pool, now: the periodic resync after a restart, a crash of a
   * member, or anything missed. Members of pools that no longer exist (a
   * crash during a pool's delete) are removed.
   */
  async resync(): Promise<void> {
    const pools = (await this.store.listObjects('SandboxWarmPool')) as unknown as SandboxWarmPool[];
    for (const pool of pools) await this.reconcile(pool);
    const live = new Set(pools.map((p) => `${p.metadata.namespace}/${p.metadata.name}`));
    for (const s of await this.sandboxes.list()) {
      const pool = s.metadata.labels?.[LABELS.pool];
      if (!pool || s.status.phase === 'Terminating' || live.has(`${s.metadata.namespace}/${pool}`)) continue;
      if (await this.store.getObject('SandboxWarmPool', s.metadata.namespace, pool)) continue; // created since the listing
      await this.remove(s, false);
    }
  }

  private async reconcileUid(uid: string): Promise<void> {
    const pool = await this.findByUid(uid);
    if (pool) await this.reconcile(pool);
    else for (const [member, owner] of this.memberOf) if (owner === uid) this.memberOf.delete(member);
  }

  private async reconcileWhere(namespace: string, match: (p: SandboxWarmPool) => boolean): Promise<void> {
    for (const pool of await this.list(namespace)) if (match(pool)) await this.reconcile(pool);
  }

  private reconcile(stale: SandboxWarmPool): Promise<void> {
    return this.serial
      .run(stale.metadata.uid, async () => {
        const pool = await this.find(stale.metadata.namespace, stale.metadata.name);
        if (pool?.metadata.uid === stale.metadata.uid) await this.converge(pool);
      })
      .catch((err: unknown) => this.log.error({ err, pool: stale.metadata.name }, 'warm pool reconcile failed'));
  }

  private async converge(pool: SandboxWarmPool): Promise<void> {
    const { namespace, name, uid } = pool.metadata;
    const template = await this.templates.resolve(namespace, pool.spec.sandboxTemplateRef.name);
    if (!template) {
      return this.setStatus(pool, {
        ...pool.status,
        conditions: [
          condition(
            'False',
            REASON.TemplateNotFound,
            `sandbox template "${pool.spec.sandboxTemplateRef.name}" not found in namespace "${namespace}"; the pool keeps its members and makes no new ones`,
          ),
        ],
      });
    }
    const hash = templateHash(template);
    let members = await this.members(pool);
    const recreate = pool.spec.updateStrategy?.type === 'Recreate';
    const gone = members.filter(
      (m) => m.status.phase === 'Failed' || (recreate && m.metadata.annotations?.[HASH_ANNOTATION] !== hash && !this.reserved.has(m.metadata.uid)),
    );
    const failure = members.find((m) => m.status.phase === 'Failed')?.status.conditions.find((c) => c.type === CONDITION.Ready)?.message;
    if (failure) this.failed(uid);
    await Promise.all(gone.map((m) => this.remove(m, false)));
    members = members.filter((m) => !gone.includes(m));

    const want = pool.spec.replicas;
    let problem: { reason: ConditionReason; message: string } | undefined = failure
      ? { reason: REASON.SandboxStartFailed, message: `a member failed to start: ${failure}` }
      : undefined;
    if (members.length < want && !this.backingOff(uid)) {
      const shape = sandboxFromTemplate(template);
      for (let i = members.length; i < want; i++) {
        try {
          const created = await this.sandboxes.create(
            namespace,
            {
              metadata: {
                generateName: `${name.slice(0, 56)}-`,
                labels: { ...shape.labels, [LABELS.pool]: name },
                annotations: { ...shape.annotations, [HASH_ANNOTATION]: hash },
              },
              spec: shape.spec,
            },
            { internal: true }, // a pool member: it starts in the background, one at a time
          );
          this.memberOf.set(created.metadata.uid, uid);
        } catch (err) {
          if (!(err instanceof MoatError) || err.code >= 500) throw err;
          this.failed(uid);
          problem = { reason: err.reason === REASON.ImageNotFound ? REASON.ImageNotFound : REASON.SandboxCreateFailed, message: err.message };
          break;
        }
      }
    } else if (members.length > want) {
      // Surplus: not-ready ones first, then the newest (members made in the same millisecond: by name).
      const order = [...members].sort(
        (a, b) =>
          Number(isReady(a.status)) - Number(isReady(b.status)) ||
          b.metadata.creationTimestamp.localeCompare(a.metadata.creationTimestamp) ||
          b.metadata.name.localeCompare(a.metadata.name),
      );
      await Promise.all(
        order
          .filter((m) => !this.reserved.has(m.metadata.uid))
          .slice(0, members.length - want)
          .map((m) => this.remove(m, false)),
      );
    }
    if (!problem) this.backoff.delete(uid);
    const ready = members.filter((m) => isReady(m.status)).length;
    await this.setStatus(pool, {
      ...pool.status,
      conditions: [
        problem
          ? condition('False', problem.reason, problem.message)
          : ready >= want
            ? condition('True', REASON.PoolFull, `${ready} of ${want} ready`)
            : condition('False', REASON.Filling, `${ready} of ${want} ready`),
      ],
    });
  }

  private async members(pool: SandboxWarmPool): Promise<Sandbox[]> {
    const all = await this.sandboxes.list(pool.metadata.namespace, `${LABELS.pool}=${pool.metadata.name}`);
    const uids = new Set(all.map((m) => m.metadata.uid));
    for (const [member, owner] of this.memberOf) if (owner === pool.metadata.uid && !uids.has(member)) this.memberOf.delete(member);
    for (const uid of uids) this.memberOf.set(uid, pool.metadata.uid);
    return all.filter((s) => s.status.phase !== 'Terminating');
  }

  private async remove(member: Sandbox, wait: boolean): Promise<void> {
    await this.sandboxes.delete(member.metadata.namespace, member.metadata.name, wait).catch((err: unknown) => {
      if (!(err instanceof MoatError && err.code === 404)) throw err; // already taken or gone
    });
  }

  private failed(uid: string): void {
    const b = this.backoff.get(uid) ?? { failures: 0, until: 0 };
    b.failures++;
    b.until = Date.now() + Math.min(1000 * 2 ** b.failures, MAX_BACKOFF_MS);
    this.backoff.set(uid, b);
    this.requeue.after(uid, b.until - Date.now());
  }

  private backingOff(uid: string): boolean {
    return (this.backoff.get(uid)?.until ?? 0) > Date.now();
  }
}
