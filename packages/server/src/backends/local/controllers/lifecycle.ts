import { EVENT_REASON, LABELS, type Sandbox } from '@moat/core';
import type { Logger } from 'pino';
import type { AuditLog } from '../../../audit/log.js';
import { isLive, type Store } from '../../../store/store.js';
import { Requeue } from '../../../util/requeue.js';
import { Serial } from '../../../util/serial.js';
import type { Activity } from './activity.js';
import { idleStep, isExpired, msUntil, nextIdleStepIn, type IdleStep } from './rules.js';

type Step = IdleStep | 'expire';
const EVENT: Record<Step, string> = {
  pause: EVENT_REASON.IdlePaused,
  hibernate: EVENT_REASON.IdleHibernated,
  expire: EVENT_REASON.Expired,
  delete: EVENT_REASON.Expired,
};
/** A step that failed is tried again this much later. */
const RETRY_MS = 5000;

/** What the lifecycle controller does to sandboxes (the sandbox controller), and to the claim that owns one. */
export interface LifecycleActions {
  pause(namespace: string, name: string): Promise<unknown>;
  hibernate(namespace: string, name: string): Promise<unknown>;
  expire(namespace: string, name: string): Promise<unknown>;
  delete(namespace: string, name: string): Promise<unknown>;
  deleteClaim(namespace: string, name: string): Promise<unknown>;
}

/**
 * Time-driven changes: a sandbox's `shutdownTime` (agent-sandbox's scheduled
 * shutdown) and its idle policy. Each sandbox is looked at when it changes and
 * again when its next deadline falls (requeue-after), never by polling; at
 * start every sandbox is looked at once, so an expiry that fell while the
 * server was down is acted on then. Claimed sandboxes shut down with their
 * claim (the claim controller keeps its shutdownTime); idle steps apply to
 * them too, and an idle delete removes the claim with its sandbox.
 */
export class LifecycleController {
  private readonly serial = new Serial();
  private readonly requeue = new Requeue((uid) => this.reconcile(uid));

  constructor(
    private readonly store: Store,
    private readonly actions: LifecycleActions,
    private readonly activity: Activity,
    private readonly audit: AuditLog,
    private readonly log: Logger,
    /** The sandbox controller's watch: every change of a sandbox, by uid. */
    watch: (listener: (uid: string) => void) => void,
  ) {
    watch((uid) => this.requeue.after(uid, 0));
  }

  /** Every sandbox, once (at start). */
  async resync(): Promise<void> {
    for (const { sandbox } of await this.store.listSandboxes()) await this.reconcile(sandbox.metadata.uid);
  }

  stop(): void {
    this.requeue.stop();
  }

  /** When the sandbox is next looked at (ms since the epoch), if a deadline is scheduled. */
  nextCheck(uid: string): number | undefined {
    return this.requeue.dueAt(uid);
  }

  reconcile(uid: string, now = Date.now()): Promise<void> {
    return this.serial
      .run(uid, async () => {
        const found = await this.store.getSandboxByUid(uid);
        if (!found || !isLive(found.desired)) return this.requeue.cancel(uid);
        const s = found.sandbox;
        if (s.metadata.labels?.[LABELS.pool]) return; // unclaimed pool members wait by design
        const claim = s.metadata.labels?.[LABELS.claim];
        const shutdownIn = !claim && !isExpired(s) ? msUntil(s.spec.shutdownTime, now) : undefined;
        if (shutdownIn !== undefined && shutdownIn <= 0) {
          return this.act(s, s.spec.shutdownPolicy === 'Delete' ? 'delete' : 'expire', `its shutdownTime ${s.spec.shutdownTime} has passed`);
        }
        const idle = this.activity.idleMs(uid, now);
        const step = idleStep(s, idle);
        if (step) return this.act(s, step, `unused for ${s.spec.idlePolicy![`${step}AfterSeconds`]} s or more (idlePolicy)`);
        const next = [shutdownIn, nextIdleStepIn(s, idle)].filter((ms): ms is number => ms !== undefined);
        if (next.length) this.requeue.after(uid, Math.min(...next));
      })
      .catch((err: unknown) => {
        this.log.error({ err, uid }, 'lifecycle step failed');
        this.requeue.after(uid, RETRY_MS);
      });
  }

  private async act(s: Sandbox, step: Step, why: string): Promise<void> {
    const { namespace, name } = s.metadata;
    const claim = s.metadata.labels?.[LABELS.claim];
    this.log.info({ sandbox: name, namespace, step }, `lifecycle: ${step}, ${why}`);
    await this.store.addEvent(s, { type: 'Normal', reason: EVENT[step], message: `${step}: ${why}` });
    let result: 'success' | 'failed' = 'success';
    try {
      if (step === 'pause') await this.actions.pause(namespace, name);
      else if (step === 'hibernate') await this.actions.hibernate(namespace, name);
      else if (step === 'expire') await this.actions.expire(namespace, name);
      else if (claim) await this.actions.deleteClaim(namespace, claim);
      else await this.actions.delete(namespace, name);
    } catch (err) {
      result = 'failed';
      throw err;
    } finally {
      await this.audit.record({
        actor: { source: 'moat lifecycle' },
        action: `lifecycle.${step}`,
        namespace,
        sandbox: name,
        object: `sandboxes/${name}`,
        result,
        detail: { why },
      });
    }
  }
}
