import { CONDITION, MoatError, timeout, type ExtensionKind, type SandboxClaim } from '@moat/core';
import type { Claims, ExtensionObjects, ObjectInput } from '../types.js';
import { missingNamespace, type Kube } from './kube.js';
import { collectionPath, objectPath, refuseHostOnly, toExtension, toKube, type Kind, type KubeCondition, type KubeObject } from './translate.js';

const label = (kind: string, namespace: string, name: string) => `${kind} ${namespace}/${name}`;

/**
 * Reads `kind namespace/name` and then watches it until `done` says yes (its answer is returned), it is deleted
 * (404), or `timeoutMs` passes (408). The first check is a GET, so a state reached before the watch opened counts.
 */
export async function until<R>(
  kube: Kube,
  kind: Kind,
  namespace: string,
  name: string,
  timeoutMs: number,
  done: (obj: KubeObject) => R | undefined,
  what = 'the condition',
): Promise<R> {
  const first = await kube.get<KubeObject>(objectPath(kind, namespace, name), label(kind, namespace, name));
  return watchUntil(kube, kind, first, timeoutMs, done, what);
}

/**
 * `until` from an object already in hand (the answer of a create or a read): `first` is checked, then the watch
 * starts at its resourceVersion, so no change after it is missed and no GET is spent. The watch reads the version
 * `first` is in.
 */
export function watchUntil<R>(
  kube: Kube,
  kind: Kind,
  first: KubeObject,
  timeoutMs: number,
  done: (obj: KubeObject) => R | undefined,
  what = 'the condition',
): Promise<R> {
  const { namespace, name } = first.metadata;
  const version = first.apiVersion?.split('/')[1] ?? 'v1alpha1';
  const path = objectPath(kind, namespace, name, version);
  return new Promise<R>((resolve, reject) => {
    let settled = false;
    let stop = () => {};
    const finish = (err: Error | null, value?: R) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stop();
      if (err) reject(err);
      else resolve(value!);
    };
    const check = (obj: KubeObject) => {
      try {
        const r = done(obj);
        if (r !== undefined) finish(null, r);
      } catch (err) {
        finish(err as Error);
      }
    };
    const timer = setTimeout(() => finish(timeout(`${label(kind, namespace, name)}: ${what} did not happen within ${timeoutMs / 1000} s`)), timeoutMs);
    check(first);
    if (settled) return;
    stop = kube.watch(
      collectionPath(kind, namespace, version),
      { fieldSelector: `metadata.name=${name}`, resourceVersion: first.metadata.resourceVersion },
      (type, obj) => {
        if (type === 'DELETED') finish(new MoatError(404, 'NotFound', `${label(kind, namespace, name)} was deleted while waiting for ${what}`));
        else if (type === 'ADDED' || type === 'MODIFIED') check(obj as KubeObject);
      },
      () => void kube.get<KubeObject>(path, label(kind, namespace, name)).then(check, (err: Error) => finish(err)),
    );
  });
}

export const conditionIs = (obj: KubeObject, type: string) =>
  ((obj.status?.conditions ?? []) as KubeCondition[]).some((c) => c.type === type && c.status === 'True');

/** SandboxTemplates, SandboxWarmPools and SandboxClaims: the cluster's own objects, which agent-sandbox's controller serves. */
export class KubeObjects<T> implements ExtensionObjects<T> {
  constructor(
    protected readonly kube: Kube,
    readonly kind: ExtensionKind,
  ) {}

  protected what(namespace: string, name: string) {
    return label(this.kind, namespace, name);
  }

  protected answer(obj: KubeObject): T {
    return toExtension<T>(this.kind, obj);
  }

  /** The Kubernetes body; a kind may pick the API version its fields need. */
  protected body(namespace: string, input: ObjectInput): { version: string; body: ReturnType<typeof toKube> } {
    if (this.kind === 'SandboxTemplate') refuseHostOnly(input.spec as Record<string, unknown>, 'spec');
    return { version: 'v1alpha1', body: toKube(this.kind, namespace, input) };
  }

  async create(namespace: string, input: ObjectInput): Promise<T> {
    return this.answer(await this.post(namespace, input));
  }

  /** The create itself: the object as Kubernetes stored it. */
  protected post(namespace: string, input: ObjectInput): Promise<KubeObject> {
    const { version, body } = this.body(namespace, input);
    const name = input.metadata.name ?? `${input.metadata.generateName ?? ''}*`;
    return this.kube.call<KubeObject>('POST', collectionPath(this.kind, namespace, version), this.what(namespace, name), body).catch((err: unknown) => {
      throw missingNamespace(err, namespace);
    });
  }

  async replace(namespace: string, name: string, input: ObjectInput): Promise<T> {
    const current = await this.kube.get<KubeObject>(objectPath(this.kind, namespace, name), this.what(namespace, name));
    const { version, body } = this.body(namespace, { ...input, metadata: { ...input.metadata, name } });
    const next = { ...body, metadata: { ...body.metadata, resourceVersion: current.metadata.resourceVersion } };
    return this.answer(await this.kube.call<KubeObject>('PUT', objectPath(this.kind, namespace, name, version), this.what(namespace, name), next));
  }

  async get(namespace: string, name: string): Promise<T> {
    return this.answer(await this.kube.get<KubeObject>(objectPath(this.kind, namespace, name), this.what(namespace, name)));
  }

  async list(namespace?: string, labelSelector?: string): Promise<T[]> {
    const q = labelSelector ? `?labelSelector=${encodeURIComponent(labelSelector)}` : '';
    const list = await this.kube.get<{ items: KubeObject[] }>(collectionPath(this.kind, namespace) + q, `${this.kind}s`);
    return list.items.map((o) => this.answer(o));
  }

  async delete(namespace: string, name: string, wait = false): Promise<T> {
    const path = objectPath(this.kind, namespace, name);
    const obj = await this.kube.call<KubeObject>('DELETE', path, this.what(namespace, name), { propagationPolicy: 'Foreground' });
    if (wait) await this.gone(path, this.what(namespace, name));
    return this.answer(obj);
  }

  /** Polls until the object is gone (Foreground deletion: after what it owns). */
  protected async gone(path: string, what: string, timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (await this.kube.find(path, what)) {
      if (Date.now() > deadline) throw timeout(`${what} was not gone within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<T> {
    return until(this.kube, this.kind as Kind, namespace, name, timeoutMs, (o) => (this.conditionTrue(o, condition) ? this.answer(o) : undefined), condition);
  }

  protected conditionTrue(obj: KubeObject, condition: string): boolean {
    return conditionIs(obj, condition);
  }
}

/** agent-sandbox's pools report counts, not conditions: Ready is every replica ready, as Moat's own pools say. */
export class KubePools<T> extends KubeObjects<T> {
  protected override answer(obj: KubeObject): T {
    const a = super.answer(obj) as { spec: { replicas?: number }; status: { readyReplicas: number; conditions: KubeCondition[] } };
    const want = a.spec.replicas ?? 0;
    const full = a.status.readyReplicas >= want;
    a.status.conditions = [
      ...a.status.conditions.filter((c) => c.type !== CONDITION.Ready),
      {
        type: CONDITION.Ready,
        status: full ? 'True' : 'False',
        reason: full ? 'PoolFull' : 'Filling',
        message: `${a.status.readyReplicas}/${want} ready`,
        lastTransitionTime: '',
      },
    ];
    return a as T;
  }

  protected override conditionTrue(obj: KubeObject, condition: string): boolean {
    if (condition !== CONDITION.Ready) return super.conditionTrue(obj, condition);
    return ((obj.status?.readyReplicas as number | undefined) ?? 0) >= ((obj.spec.replicas as number | undefined) ?? 0);
  }
}

/** How long a claim's create waits for agent-sandbox to pick its sandbox, so the answer names it (as on one host). */
const SERVE_WAIT_MS = 30_000;
/** Ready=False reasons of agent-sandbox's claims that no wait will change. */
const TERMINAL = new Set(['TemplateNotFound', 'WarmPoolNotFound', 'ClaimExpired', 'VolumeClaimTemplatesError', 'AdoptionConflict']);

/**
 * Claims. v1beta1 names a pool (warmPoolRef); v1alpha1 names a template, which agent-sandbox v0.5 serves only
 * through a named pool (`warmpool`). So Moat names one: a pool of the template if there is one (a warm start, as
 * on one host), else `shadow-pool-<template>`, which Moat creates with 0 replicas when missing, as agent-sandbox's
 * upgrade does, so a claim by template also works on a fresh cluster (a cold start).
 */
export class KubeClaims extends KubeObjects<SandboxClaim> implements Claims {
  constructor(kube: Kube) {
    super(kube, 'SandboxClaim');
  }

  /** A missing `shadow-pool-<template>` is the template that was missing, and Moat's answer says that. */
  protected override answer(obj: KubeObject): SandboxClaim {
    const claim = super.answer(obj);
    const template = claim.spec.sandboxTemplateRef?.name;
    const ready = claim.status.conditions.find((c) => c.type === CONDITION.Ready);
    if (template && ready?.reason === 'WarmPoolNotFound' && ready.message.includes(`shadow-pool-${template}`)) {
      Object.assign(ready, { reason: 'TemplateNotFound', message: `SandboxTemplate "${template}" not found in namespace "${claim.metadata.namespace}"` });
    }
    return claim;
  }

  protected override body(namespace: string, input: ObjectInput) {
    const spec = input.spec as { warmPoolRef?: { name: string } };
    return { version: spec.warmPoolRef ? 'v1beta1' : 'v1alpha1', body: toKube('SandboxClaim', namespace, input, spec.warmPoolRef ? 'v1beta1' : 'v1alpha1') };
  }

  override async create(namespace: string, input: ObjectInput): Promise<SandboxClaim> {
    const spec = input.spec as { warmPoolRef?: { name: string }; sandboxTemplateRef?: { name: string }; warmpool?: string };
    if (!spec.warmPoolRef && spec.sandboxTemplateRef && (!spec.warmpool || spec.warmpool === 'default' || spec.warmpool === 'none')) {
      // "Any pool of the template" (or none: a cold start), as on one host: agent-sandbox v0.5 takes only a named pool.
      const pool = await this.poolFor(namespace, spec.sandboxTemplateRef.name, spec.warmpool !== 'none');
      input = { ...input, spec: { ...spec, warmpool: pool } };
    }
    const created = await this.post(namespace, input);
    const name = created.metadata.name;
    // From the create's own answer: the watch opens while the controller adopts, and its event names the sandbox.
    return watchUntil(this.kube, 'SandboxClaim', created, SERVE_WAIT_MS, (o) => {
      const served = (o.status?.sandbox as { name?: string } | undefined)?.name;
      const ready = ((o.status?.conditions ?? []) as KubeCondition[]).find((c) => c.type === CONDITION.Ready);
      return served || (ready?.status === 'False' && TERMINAL.has(ready.reason ?? '')) ? this.answer(o) : undefined;
    }).catch((err: unknown) => {
      if (err instanceof MoatError && err.code === 408) return this.get(namespace, name); // still pending: the answer says so
      throw err;
    });
  }

  /**
   * The pool to serve a claim by `template`: when `warm`, the user's pool of that template with the most ready
   * members; else `shadow-pool-<template>` (made when missing; a template that does not exist gets none, see answer).
   */
  private async poolFor(namespace: string, template: string, warm: boolean): Promise<string> {
    type Pool = { metadata: { name: string }; spec: { sandboxTemplateRef?: { name: string } }; status?: { readyReplicas?: number } };
    // v1beta1, the version the cluster stores: these fields are the same in both, and no conversion webhook is called.
    const pools = (await this.kube.get<{ items: Pool[] }>(collectionPath('SandboxWarmPool', namespace, 'v1beta1'), 'SandboxWarmPools')).items;
    const name = `shadow-pool-${template}`;
    const own = pools
      .filter((p) => warm && p.spec.sandboxTemplateRef?.name === template && p.metadata.name !== name)
      .sort((a, b) => (b.status?.readyReplicas ?? 0) - (a.status?.readyReplicas ?? 0))[0];
    if (own) return own.metadata.name;
    if (pools.some((p) => p.metadata.name === name)) return name;
    if (!(await this.kube.find(objectPath('SandboxTemplate', namespace, template), label('SandboxTemplate', namespace, template)))) return name;
    const body = {
      apiVersion: 'extensions.agents.x-k8s.io/v1alpha1',
      kind: 'SandboxWarmPool',
      metadata: { name, namespace, labels: { 'app.kubernetes.io/managed-by': 'moat' } },
      spec: { replicas: 0, sandboxTemplateRef: { name: template } },
    };
    await this.kube.call('POST', collectionPath('SandboxWarmPool', namespace), label('SandboxWarmPool', namespace, name), body).catch((err: unknown) => {
      if (!(err instanceof MoatError && err.code === 409)) throw err; // another replica made it
    });
    return name;
  }

  async extend(namespace: string, name: string, shutdownTime: string): Promise<void> {
    await this.kube.mergePatch(objectPath('SandboxClaim', namespace, name), this.what(namespace, name), { spec: { lifecycle: { shutdownTime } } });
  }
}
