import { LABELS, invalid, type IdlePolicy, type Sandbox } from '@moat/core';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/log.js';
import type { Store } from '../store/store.js';
import { idleMs } from './activity.js';
import type { ClaimController } from './claims.js';
import { isExpired, type SandboxController } from './sandboxes.js';

const STEPS = ['pauseAfterSeconds', 'hibernateAfterSeconds', 'deleteAfterSeconds'] as const;

/** Idle steps given together must come in order: pause, then hibernate, then delete. */
export function checkIdlePolicy(p: IdlePolicy, field: string): void {
  const given = STEPS.filter((k) => p[k] !== undefined);
  for (let i = 1; i < given.length; i++) {
    const [a, b] = [given[i - 1]!, given[i]!];
    if (p[b]! <= p[a]!) throw invalid(`${field}: ${b} (${p[b]}) must be later than ${a} (${p[a]})`);
  }
}

type IdleStep = 'pause' | 'hibernate' | 'delete';
type Step = IdleStep | 'expire';
const EVENT: Record<Step, string> = { pause: 'IdlePaused', hibernate: 'IdleHibernated', expire: 'Expired', delete: 'Expired' };

/**
 * Time-driven changes: a sandbox's `shutdownTime` (agent-sandbox's scheduled
 * shutdown) and its idle policy. Level-triggered: every resync compares each
 * sandbox with the clock, so an expiry that fell while the server was down
 * is acted on at the next start. Claimed sandboxes shut down with their
 * claim (the claim controller keeps its shutdownTime); idle steps apply to
 * them too, and an idle delete removes the claim with its sandbox.
 */
export class LifecycleController {
  constructor(
    private readonly store: Store,
    private readonly sandboxes: SandboxController,
    private readonly claims: ClaimController,
    private readonly audit: AuditLog,
    private readonly log: Logger,
  ) {}

  async resync(now = Date.now()): Promise<void> {
    for (const { sandbox, desired } of await this.store.listSandboxes()) {
      if (desired !== 'Running' || sandbox.metadata.labels?.[LABELS.pool]) continue; // unclaimed pool members wait by design
      await this.reconcile(sandbox, now).catch((err: unknown) => this.log.error({ err, sandbox: sandbox.metadata.name }, 'lifecycle step failed'));
    }
  }

  private async reconcile(s: Sandbox, now: number): Promise<void> {
    const claim = s.metadata.labels?.[LABELS.claim];
    if (!claim && !isExpired(s) && s.spec.shutdownTime && Date.parse(s.spec.shutdownTime) <= now) {
      return this.act(s, s.spec.shutdownPolicy === 'Delete' ? 'delete' : 'expire', `its shutdownTime ${s.spec.shutdownTime} has passed`);
    }
    const step = idleStep(s, idleMs(s.metadata.uid, now));
    if (step) await this.act(s, step, `unused for ${s.spec.idlePolicy![`${step}AfterSeconds`]} s or more (idlePolicy)`);
  }

  private async act(s: Sandbox, step: Step, why: string): Promise<void> {
    const { namespace, name } = s.metadata;
    const claim = s.metadata.labels?.[LABELS.claim];
    this.log.info({ sandbox: name, namespace, step }, `lifecycle: ${step}, ${why}`);
    await this.store.addEvent(s, { type: 'Normal', reason: EVENT[step], message: `${step}: ${why}` });
    let result: 'success' | 'failed' = 'success';
    try {
      if (step === 'pause') await this.sandboxes.pause(namespace, name);
      else if (step === 'hibernate') await this.sandboxes.hibernate(namespace, name);
      else if (step === 'expire') await this.sandboxes.expire(namespace, name);
      else if (claim) await this.claims.delete(namespace, claim);
      else await this.sandboxes.delete(namespace, name);
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

/** The furthest idle step the sandbox has reached and not yet taken. */
function idleStep(s: Sandbox, idle: number): IdleStep | undefined {
  const p = s.spec.idlePolicy;
  if (!p || idle <= 0) return undefined;
  const due = (k: (typeof STEPS)[number]) => p[k] !== undefined && idle >= p[k]! * 1000;
  const phase = s.status.phase;
  if (due('deleteAfterSeconds')) return 'delete';
  if (isExpired(s)) return undefined;
  if (due('hibernateAfterSeconds') && (phase === 'Running' || phase === 'Paused')) return 'hibernate';
  if (due('pauseAfterSeconds') && phase === 'Running') return 'pause';
  return undefined;
}
