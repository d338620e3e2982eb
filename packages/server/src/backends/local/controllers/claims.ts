import {
  CONDITION,
  LABELS,
  REASON,
  MoatError,
  alreadyExists,
  conflict,
  invalid,
  type Condition,
  type ConditionReason,
  type ConditionType,
  type Sandbox,
  type SandboxClaim,
  type SandboxSpec,
  type SandboxClaimSpec,
  type SandboxClaimStatus,
  type SandboxTemplate,
  type SandboxWarmPool,
} from '@moat/core';
import type { Logger } from 'pino';
import { isLive, type Store } from '../../../store/store.js';
import { Requeue } from '../../../util/requeue.js';
import { coldStartReason, sandboxFromTemplate, type SandboxShape } from './from-template.js';
import { ObjectController, type ObjectInput } from './objects.js';
import type { Templates } from './pools.js';
import { msUntil } from './rules.js';

const cond = (type: ConditionType, status: Condition['status'], reason: ConditionReason, message = ''): Condition => ({
  type,
  status,
  reason,
  message,
  lastTransitionTime: new Date().toISOString(),
});

/** Claim status as stored: how it was served. Readiness is read live from the sandbox. */
interface ClaimStatus extends SandboxClaimStatus {
  /** Moat: when the claim's sandbox goes (lifecycle.shutdownTime, or the template's ttlSeconds after the claim was served). */
  shutdownTime?: string;
  expired?: boolean;
}

/** What claims do to sandboxes (the sandbox controller). */
export interface ClaimSandboxes {
  create(namespace: string, input: ObjectInput & { spec: SandboxSpec }, opts: { internal: true }): Promise<Sandbox>;
  delete(namespace: string, name: string, wait?: boolean): Promise<unknown>;
  setShutdownTime(namespace: string, name: string, shutdownTime: string): Promise<unknown>;
  list(namespace?: string, labelSelector?: string): Promise<Sandbox[]>;
}

/** The warm pools claims are served from (the warm pool controller). */
export interface WarmPools {
  byName(namespace: string, name: string): Promise<SandboxWarmPool | undefined>;
  poolsFor(namespace: string, template: string): Promise<SandboxWarmPool[]>;
  take(pool: SandboxWarmPool, target: SandboxShape & { name: string }): Promise<Sandbox | undefined>;
}

/**
 * SandboxClaims: a Sandbox of the claim's name, taken from a warm pool of the
 * template when one has a ready member, else started cold. The claim owns the
 * sandbox: deleting the claim deletes it.
 */
export class ClaimController extends ObjectController<SandboxClaim> {
  /** Claims are looked at again at their shutdownTime. */
  private readonly requeue = new Requeue((uid) => this.reconcileUid(uid));

  constructor(
    store: Store,
    private readonly sandboxes: ClaimSandboxes,
    private readonly templates: Templates,
    private readonly pools: WarmPools,
    private readonly log: Logger,
  ) {
    super(store, 'SandboxClaim', 'sandbox claim');
    // A template that appears (or changes) may let waiting claims through.
    templates.onChange(({ namespace }) => void this.resyncNamespace(namespace));
  }

  protected validate(namespace: string, spec: SandboxClaimSpec, old?: SandboxClaim): SandboxClaimSpec {
    if (old) {
      if (JSON.stringify(old.spec) === JSON.stringify(spec)) return spec;
      throw conflict(`the spec of sandbox claim "${old.metadata.name}" cannot change; delete the claim and create it again`);
    }
    if (!spec.sandboxTemplateRef && !spec.warmPoolRef) {
      throw invalid(`spec.sandboxTemplateRef.name (or, as in agent-sandbox v1beta1, spec.warmPoolRef.name) is required in namespace "${namespace}"`);
    }
    if (spec.lifecycle?.shutdownTime && Number.isNaN(Date.parse(spec.lifecycle.shutdownTime))) throw invalid('spec.lifecycle.shutdownTime is not a valid time');
    return spec;
  }

  protected initialStatus(): ClaimStatus {
    return { conditions: [cond(CONDITION.Ready, 'False', REASON.Pending, 'the claim is being served')] };
  }

  override async create(namespace: string, input: ObjectInput): Promise<SandboxClaim> {
    // The claim's sandbox takes the claim's name, so that name must be free.
    if (input.metadata.name && (await this.store.getSandbox(namespace, input.metadata.name))) {
      throw alreadyExists(`a sandbox named "${input.metadata.name}" already exists in namespace "${namespace}"; a claim's sandbox takes the claim's name`);
    }
    return super.create(namespace, input);
  }

  /** Served before the create call answers, so a warm claim is Ready in the response. */
  protected override async changed(claim: SandboxClaim): Promise<void> {
    await this.reconcile(claim);
  }

  protected override async present(claim: SandboxClaim): Promise<SandboxClaim> {
    const status = { ...(claim.status as ClaimStatus), conditions: [...claim.status.conditions] };
    const name = status.sandbox?.name;
    const sandbox = name ? await this.owned(claim, name) : undefined;
    const set = (c: Condition) => (status.conditions = [...status.conditions.filter((x) => x.type !== c.type), c]);
    if (status.expired) set(cond(CONDITION.Ready, 'False', REASON.ClaimExpired, `the claim expired at ${status.shutdownTime}; its sandbox was deleted`));
    else if (name && !sandbox) set(cond(CONDITION.Ready, 'False', REASON.SandboxNotFound, `sandbox "${name}" no longer exists`));
    else if (sandbox) {
      const ready = sandbox.status.conditions.find((c) => c.type === CONDITION.Ready);
      set(ready ? { ...ready } : cond(CONDITION.Ready, 'False', REASON.Creating));
    }
    const templateName = claim.spec.sandboxTemplateRef?.name;
    if (sandbox && templateName && !(await this.templates.resolve(claim.metadata.namespace, templateName))) {
      set(
        cond(
          CONDITION.TemplateAvailable,
          'False',
          REASON.TemplateNotFound,
          `sandbox template "${templateName}" was deleted; this claim's sandbox keeps running`,
        ),
      );
    }
    return { ...claim, status };
  }

  /** Moves the claim's shutdown (and its sandbox's, which shows it) to `shutdownTime`. */
  async extend(namespace: string, name: string, shutdownTime: string): Promise<void> {
    const found = await this.find(namespace, name);
    if (!found) throw new MoatError(404, 'NotFound', `sandbox claim "${name}" not found in namespace "${namespace}"`);
    await this.serial.run(found.metadata.uid, async () => {
      const claim = await this.find(namespace, name);
      if (!claim || claim.metadata.uid !== found.metadata.uid) return;
      const status = claim.status as ClaimStatus;
      if (status.expired) throw conflict(`sandbox claim "${name}" expired at ${status.shutdownTime}; its sandbox is gone`);
      await this.setStatus(claim, { ...status, shutdownTime } as ClaimStatus);
      this.requeue.after(claim.metadata.uid, msUntil(shutdownTime, Date.now())!);
      if (status.sandbox?.name) await this.sandboxes.setShutdownTime(namespace, status.sandbox.name, shutdownTime);
    });
  }

  protected override async deleting(claim: SandboxClaim, wait: boolean): Promise<void> {
    await this.serial.run(claim.metadata.uid, () => this.deleteSandbox(claim, wait));
  }

  stop(): void {
    this.requeue.stop();
  }

  /** Claims still waiting to be served, claims past their shutdown time, and sandboxes of deleted claims. */
  async resync(): Promise<void> {
    const claims = (await this.store.listObjects('SandboxClaim')) as unknown as SandboxClaim[];
    for (const c of claims) await this.reconcile(c);
    // A sandbox whose claim is gone (a crash during the claim's delete) goes too.
    const live = new Set(claims.map((c) => `${c.metadata.namespace}/${c.metadata.name}`));
    for (const s of await this.sandboxes.list()) {
      const claim = s.metadata.labels?.[LABELS.claim];
      if (!claim || s.status.phase === 'Terminating' || live.has(`${s.metadata.namespace}/${claim}`)) continue;
      if (await this.store.getObject('SandboxClaim', s.metadata.namespace, claim)) continue; // created since the listing
      await this.sandboxes.delete(s.metadata.namespace, s.metadata.name).catch(() => {});
    }
  }

  private async reconcileUid(uid: string): Promise<void> {
    const claim = await this.findByUid(uid);
    if (claim) await this.reconcile(claim);
  }

  private async resyncNamespace(namespace: string): Promise<void> {
    for (const c of await this.store.listObjects('SandboxClaim', namespace)) await this.reconcile(c as unknown as SandboxClaim);
  }

  private reconcile(stale: SandboxClaim): Promise<void> {
    return this.serial
      .run(stale.metadata.uid, async () => {
        const claim = await this.find(stale.metadata.namespace, stale.metadata.name);
        if (claim?.metadata.uid !== stale.metadata.uid) return;
        const status = claim.status as ClaimStatus;
        if (status.expired) return;
        if ((msUntil(status.shutdownTime, Date.now()) ?? 1) <= 0) return this.expire(claim);
        if (!status.sandbox?.name) await this.serve(claim);
        const left = msUntil((claim.status as ClaimStatus).shutdownTime, Date.now());
        if (left !== undefined) this.requeue.after(claim.metadata.uid, left);
      })
      .catch((err: unknown) => this.log.error({ err, claim: stale.metadata.name }, 'claim reconcile failed'));
  }

  private async serve(claim: SandboxClaim): Promise<void> {
    const { namespace, name } = claim.metadata;
    const fail = (reason: ConditionReason, message: string) =>
      this.setStatus(claim, { ...claim.status, conditions: [cond(CONDITION.Ready, 'False', reason, message)] });

    let pools: SandboxWarmPool[] = [];
    let templateName = claim.spec.sandboxTemplateRef?.name;
    const named = claim.spec.warmPoolRef?.name ?? (claim.spec.warmpool && !['default', 'none'].includes(claim.spec.warmpool) ? claim.spec.warmpool : undefined);
    if (named) {
      const pool = await this.pools.byName(namespace, named);
      if (!pool) return fail(REASON.WarmPoolNotFound, `sandbox warm pool "${named}" not found in namespace "${namespace}"`);
      if (templateName && pool.spec.sandboxTemplateRef.name !== templateName) {
        return fail(REASON.WarmPoolMismatch, `warm pool "${named}" holds sandboxes of template "${pool.spec.sandboxTemplateRef.name}", not "${templateName}"`);
      }
      templateName = pool.spec.sandboxTemplateRef.name;
      pools = [pool];
    } else if (claim.spec.warmpool !== 'none') {
      pools = await this.pools.poolsFor(namespace, templateName!);
    }
    const template = await this.templates.resolve(namespace, templateName!);
    if (!template) return fail(REASON.TemplateNotFound, `sandbox template "${templateName}" not found in namespace "${namespace}"`);

    let shape;
    try {
      shape = sandboxFromTemplate(template, claim);
    } catch (err) {
      if (err instanceof MoatError) return fail(REASON.InvalidClaim, err.message);
      throw err;
    }
    const cold = coldStartReason(template, claim);
    if (!cold) {
      for (const pool of pools) {
        const adopted = await this.pools.take(pool, { ...shape, name });
        if (adopted)
          return this.served(
            claim,
            template,
            adopted,
            cond(CONDITION.WarmPool, 'True', REASON.FromWarmPool, `taken from warm pool "${pool.metadata.name}"`),
            pool.metadata.name,
          );
      }
    }
    const why = cold
      ? cond(CONDITION.WarmPool, 'False', REASON.ColdStartRequired, cold)
      : claim.spec.warmpool === 'none'
        ? cond(CONDITION.WarmPool, 'False', REASON.WarmPoolDisabled, 'the claim asked for a fresh sandbox (warmpool: none)')
        : pools.length
          ? cond(
              CONDITION.WarmPool,
              'False',
              REASON.PoolExhausted,
              `no ready sandbox in warm pool${pools.length > 1 ? 's' : ''} ${pools.map((p) => `"${p.metadata.name}"`).join(', ')}; started one cold`,
            )
          : cond(CONDITION.WarmPool, 'False', REASON.NoWarmPool, `no warm pool holds template "${template.metadata.name}"; started one cold`);
    try {
      const created = await this.sandboxes.create(
        namespace,
        { metadata: { name, labels: shape.labels, annotations: shape.annotations }, spec: shape.spec },
        { internal: true },
      );
      await this.served(claim, template, created, why);
    } catch (err) {
      if (!(err instanceof MoatError) || err.code >= 500) throw err;
      const reason =
        err.reason === REASON.ImageNotFound ? REASON.ImageNotFound : err.reason === 'AlreadyExists' ? REASON.SandboxNameConflict : REASON.InvalidTemplate;
      await fail(reason, err.message);
    }
  }

  private async served(claim: SandboxClaim, template: SandboxTemplate, sandbox: Sandbox, how: Condition, pool?: string): Promise<void> {
    const ttl = template.spec.ttlSeconds;
    const shutdownTime = claim.spec.lifecycle?.shutdownTime ?? (ttl ? new Date(Date.now() + ttl * 1000).toISOString() : undefined);
    const status: ClaimStatus = {
      conditions: [...claim.status.conditions.filter((c) => c.type === CONDITION.Ready), how],
      sandbox: { name: sandbox.metadata.name },
      ...(pool ? { warmPool: pool } : {}),
      ...(shutdownTime ? { shutdownTime } : {}),
    };
    await this.setStatus(claim, status);
    // Shown on the sandbox too; the claim's own time is the one enforced.
    if (shutdownTime) await this.sandboxes.setShutdownTime(sandbox.metadata.namespace, sandbox.metadata.name, shutdownTime);
  }

  /** shutdownPolicy Delete removes the claim with its sandbox; Retain (the default) keeps the claim, marked expired. */
  private async expire(claim: SandboxClaim): Promise<void> {
    const policy = claim.spec.lifecycle?.shutdownPolicy ?? 'Retain';
    this.log.info({ claim: claim.metadata.name, policy }, 'claim expired');
    await this.deleteSandbox(claim, policy === 'DeleteForeground');
    if (policy === 'Retain') await this.setStatus(claim, { ...claim.status, expired: true } as ClaimStatus);
    else {
      await this.store.deleteObject(claim.metadata.uid);
      this.changes.emit(claim.metadata.uid);
    }
  }

  private async deleteSandbox(claim: SandboxClaim, wait: boolean): Promise<void> {
    const name = claim.status.sandbox?.name;
    if (!name || !(await this.owned(claim, name))) return;
    await this.sandboxes.delete(claim.metadata.namespace, name, wait).catch((err: unknown) => {
      if (!(err instanceof MoatError && err.code === 404)) throw err;
    });
  }

  /** The claim's sandbox, if it still exists and still belongs to this claim. */
  private async owned(claim: SandboxClaim, name: string): Promise<Sandbox | undefined> {
    const found = await this.store.getSandbox(claim.metadata.namespace, name);
    return found && isLive(found.desired) && found.sandbox.metadata.labels?.[LABELS.claim] === claim.metadata.name ? found.sandbox : undefined;
  }
}
