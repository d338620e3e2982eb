import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CONDITION, MoatError, REASON, resolveLimits, type Sandbox, type SandboxClaim } from '@moat/core';
import type { FastifyBaseLogger } from 'fastify';
import { authorize, isAdmin } from '../auth/authorize.js';
import type { Principal } from '../auth/keys.js';
import type { Claims, Sandboxes } from '../backends/types.js';
import { DEFAULT_AGENT } from '../identity/identity.js';

/** Marks the claims behind E2B sandboxes; E2B's own fields live in the claim's annotations. */
export const E2B_LABEL = 'e2b.dev/sandbox';
const ANNOTATIONS = {
  template: 'e2b.dev/template',
  endAt: 'e2b.dev/end-at',
  metadata: 'e2b.dev/metadata',
  envVars: 'e2b.dev/env-vars',
  autoPause: 'e2b.dev/auto-pause',
} as const;

/** E2B ids are lowercase alphanumerics (its sandbox hosts split on '-'); 20 of them, as E2B makes. */
const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
export const E2B_ID_PATTERN = '^[a-z0-9]{1,63}$';
const newId = () => [...randomBytes(20)].map((b) => ID_ALPHABET[b % ID_ALPHABET.length]).join('');

/** Claim reasons after which the sandbox will never become ready. */
const FATAL = new Set<string>([
  REASON.TemplateNotFound,
  REASON.ImageNotFound,
  REASON.InvalidClaim,
  REASON.InvalidTemplate,
  REASON.SandboxNameConflict,
  REASON.StartFailed,
]);
const READY_TIMEOUT_MS = 120_000;

/** The built-in E2B names and what they are here; `E2bOptions.templates` adds to (and overrides) them. */
export const DEFAULT_TEMPLATE_ALIASES: Record<string, string> = {
  base: 'base',
  'code-interpreter-v1': 'code-interpreter',
  'code-interpreter': 'code-interpreter',
};

export interface E2bSandbox {
  id: string;
  namespace: string;
  claim: SandboxClaim;
  /** Undefined while the claim has no sandbox (being served or gone). */
  sandbox?: Sandbox;
  endAt: number;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
}

export interface CreateRequest {
  templateID: string;
  timeout?: number;
  metadata?: Record<string, string>;
  envVars?: Record<string, string>;
  /** At the timeout, pause instead of kill (E2B's `onTimeout: 'pause'`). */
  autoPause?: boolean;
}

const parseJsonMap = (s: string | undefined): Record<string, string> => (s ? (JSON.parse(s) as Record<string, string>) : {});

const notFoundE2b = (id: string) => new MoatError(404, 'NotFound', `sandbox "${id}" not found`);

/** How often the deadlines are read again from the claims: those set through other replicas of a cluster. */
const RELOAD_MS = 5000;

/**
 * E2B sandboxes are SandboxClaims named by the E2B id, so a warm pool of the
 * template serves them and deleting one removes everything. The timeout is
 * enforced here, by the server that leads (on a cluster, the replica holding
 * the Lease; any replica may set a deadline): deadlines are kept in the
 * claim's annotations, so they survive a restart or a new leader, and in
 * memory, read again every few seconds.
 */
export class E2bSandboxes {
  private readonly deadlines = new Map<string, { namespace: string; id: string; endAt: number; trackedAt: number }>();
  private timer: NodeJS.Timeout | undefined;
  /** When the deadlines were last read from the claims (0: not yet). */
  private loadedAt = 0;
  private loadFailed = false;
  private ticking = false;

  constructor(
    private readonly claims: Claims,
    private readonly sandboxes: Sandboxes,
    private readonly aliases: Record<string, string>,
    private readonly log: FastifyBaseLogger,
    /** Whether this server enforces timeouts now (SandboxBackend.leads). */
    private readonly leads: () => boolean,
    /** Whether the backend can freeze a sandbox (not on a cluster): E2B's pause needs it. */
    private readonly canPause: boolean,
  ) {}

  async start(): Promise<void> {
    await this.load();
    this.timer = setInterval(() => void this.tick(), 1000);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.ticking || !this.leads()) return;
    this.ticking = true;
    try {
      if (Date.now() - this.loadedAt >= RELOAD_MS) await this.load();
      if (this.loadedAt) await this.expire();
    } finally {
      this.ticking = false;
    }
  }

  /**
   * The deadlines of the E2B sandboxes that exist; those of claims gone meanwhile are forgotten. A backend that
   * cannot list every namespace yet (a cluster's RBAC, an apiserver that is away) must not keep the server from
   * starting: it is tried again at the next tick.
   */
  private async load(): Promise<void> {
    const started = Date.now();
    try {
      const seen = new Set<string>();
      for (const c of await this.claims.list(undefined, `${E2B_LABEL}=true`)) {
        this.track(c.metadata.namespace, c.metadata.name, Number(c.metadata.annotations?.[ANNOTATIONS.endAt] ?? 0));
        seen.add(`${c.metadata.namespace}/${c.metadata.name}`);
      }
      for (const [key, d] of this.deadlines) if (!seen.has(key) && d.trackedAt < started) this.deadlines.delete(key);
      this.loadedAt = started;
    } catch (err) {
      if (!this.loadFailed) this.log.warn({ err }, 'cannot list E2B sandboxes yet: their timeouts are enforced once it works');
      this.loadFailed = true;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  moatTemplate(templateID: string): string {
    return this.aliases[templateID] ?? templateID;
  }

  async create(p: Principal, req: CreateRequest): Promise<E2bSandbox> {
    const namespace = homeNamespace(p);
    authorize(p, namespace, 'write');
    // Refused now rather than found out at the timeout, when the sandbox could neither pause nor be left running.
    if (req.autoPause && !this.canPause) throw cannotPause();
    const id = newId();
    const endAt = Date.now() + (req.timeout ?? 300) * 1000;
    await this.claims.create(namespace, {
      metadata: {
        name: id,
        labels: { [E2B_LABEL]: 'true' },
        annotations: {
          [ANNOTATIONS.template]: req.templateID,
          [ANNOTATIONS.endAt]: String(endAt),
          [ANNOTATIONS.metadata]: JSON.stringify(req.metadata ?? {}),
          [ANNOTATIONS.envVars]: JSON.stringify(req.envVars ?? {}),
          ...(req.autoPause ? { [ANNOTATIONS.autoPause]: 'true' } : {}),
        },
      },
      spec: { sandboxTemplateRef: { name: this.moatTemplate(req.templateID) } },
    });
    this.track(namespace, id, endAt);
    try {
      return await this.waitReady(namespace, id);
    } catch (err) {
      await this.kill(namespace, id).catch(() => {});
      throw err;
    }
  }

  /** The sandbox with this id that the key may see (`verb` read) or use (write); 404 otherwise, like a missing one. */
  async find(p: Principal, id: string, verb: 'read' | 'write' = 'read'): Promise<E2bSandbox> {
    const namespaces = isAdmin(p)
      ? [...new Set((await this.claims.list(undefined, `${E2B_LABEL}=true`)).filter((c) => c.metadata.name === id).map((c) => c.metadata.namespace))]
      : [...p.namespaces.keys()];
    for (const namespace of namespaces) {
      const found = await this.get(namespace, id);
      if (found) {
        if (!authorize(p, namespace, verb, false)) break;
        return found;
      }
    }
    throw notFoundE2b(id);
  }

  /** Every E2B sandbox the key may see, oldest first. */
  async list(p: Principal): Promise<E2bSandbox[]> {
    const claims = (await this.claims.list(undefined, `${E2B_LABEL}=true`)).filter((c) => authorize(p, c.metadata.namespace, 'read', false));
    const all = await Promise.all(claims.map((c) => this.withSandbox(c)));
    return all.filter((s) => s.sandbox).sort((a, b) => a.sandbox!.metadata.creationTimestamp.localeCompare(b.sandbox!.metadata.creationTimestamp));
  }

  /** Sets the sandbox to end `seconds` from now (E2B's setTimeout: it may shorten it too). */
  async setTimeout(s: E2bSandbox, seconds: number): Promise<void> {
    const endAt = Date.now() + seconds * 1000;
    const { metadata, spec } = s.claim;
    await this.claims.replace(s.namespace, s.id, {
      metadata: { labels: metadata.labels ?? {}, annotations: { ...metadata.annotations, [ANNOTATIONS.endAt]: String(endAt) } },
      spec,
    });
    this.track(s.namespace, s.id, endAt);
    s.endAt = endAt;
  }

  async kill(namespace: string, id: string): Promise<void> {
    this.deadlines.delete(`${namespace}/${id}`);
    await this.claims.delete(namespace, id);
  }

  /** E2B's pause: false when the sandbox already was paused. A paused sandbox has no timeout: it waits for connect or kill. */
  async pause(s: E2bSandbox): Promise<boolean> {
    if (!s.sandbox) throw notFoundE2b(s.id);
    if (isPaused(s)) return false;
    if (!this.canPause) throw cannotPause();
    s.sandbox = await this.sandboxes.pause(s.namespace, s.sandbox.metadata.name);
    this.deadlines.delete(`${s.namespace}/${s.id}`);
    return true;
  }

  /** Resumes a paused (or wakes a hibernated) sandbox: E2B's connect; false when it was running. */
  async resume(s: E2bSandbox): Promise<boolean> {
    if (!s.sandbox) throw notFoundE2b(s.id);
    if (!isPaused(s)) return false;
    const { name } = s.sandbox.metadata;
    s.sandbox = await (s.sandbox.status.phase === 'Paused' ? this.sandboxes.resume(s.namespace, name) : this.sandboxes.wake(s.namespace, name));
    return true;
  }

  /** The Moat sandbox behind an E2B id, running, for exec, files and ports. */
  async running(p: Principal, id: string) {
    const s = await this.find(p, id, 'write');
    // As on E2B, a paused sandbox is out of reach until connect resumes it (Moat's own API resumes on use instead).
    if (isPaused(s)) throw new MoatError(409, 'SandboxPaused', `sandbox "${id}" is paused: Sandbox.connect() resumes it`);
    return { e2b: s, ...(await this.sandboxes.running(s.namespace, id)) };
  }

  private async get(namespace: string, id: string): Promise<E2bSandbox | undefined> {
    const claim = await this.claims.get(namespace, id).catch(() => undefined);
    if (!claim || claim.metadata.labels?.[E2B_LABEL] !== 'true') return undefined;
    return this.withSandbox(claim);
  }

  private async withSandbox(claim: SandboxClaim): Promise<E2bSandbox> {
    const { namespace, name, annotations = {} } = claim.metadata;
    const found = claim.status.sandbox?.name ? await this.sandboxes.get(namespace, claim.status.sandbox.name).catch(() => undefined) : undefined;
    return {
      id: name,
      namespace,
      claim,
      ...(found && found.desired !== 'Deleted' ? { sandbox: found.sandbox } : {}),
      endAt: Number(annotations[ANNOTATIONS.endAt] ?? 0),
      metadata: parseJsonMap(annotations[ANNOTATIONS.metadata]),
      envVars: parseJsonMap(annotations[ANNOTATIONS.envVars]),
    };
  }

  private async waitReady(namespace: string, id: string): Promise<E2bSandbox> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    // 10 ms at first (a warm claim is ready at once), backing off to 200 ms: on a cluster each look is an apiserver GET.
    for (let pause = 10; ; pause = Math.min(200, pause * 2)) {
      const claim = await this.claims.get(namespace, id);
      const ready = claim.status.conditions?.find((c) => c.type === CONDITION.Ready);
      if (ready?.status === 'True') return this.withSandbox(claim);
      if (ready && FATAL.has(ready.reason)) throw new MoatError(ready.reason.endsWith('NotFound') ? 404 : 400, ready.reason, ready.message);
      if (Date.now() > deadline)
        throw new MoatError(
          504,
          'Timeout',
          `sandbox "${id}" was not ready within ${READY_TIMEOUT_MS / 1000} s (${ready?.reason ?? 'pending'}: ${ready?.message ?? ''})`,
        );
      await sleep(pause);
    }
  }

  /** At its timeout a sandbox is killed, or paused when it asked for that; a paused one waits for connect or kill. */
  private async timedOut(namespace: string, id: string) {
    const s = await this.get(namespace, id);
    if (s && isPaused(s)) return void this.deadlines.delete(`${namespace}/${id}`); // paused after a restart
    if (s?.sandbox && s.claim.metadata.annotations?.[ANNOTATIONS.autoPause] === 'true') {
      this.log.info({ namespace, sandbox: id }, 'e2b sandbox timed out: paused');
      await this.pause(s);
      return;
    }
    this.log.info({ namespace, sandbox: id }, 'e2b sandbox timed out');
    await this.kill(namespace, id);
  }

  private track(namespace: string, id: string, endAt: number) {
    this.deadlines.set(`${namespace}/${id}`, { namespace, id, endAt, trackedAt: Date.now() });
  }

  private async expire() {
    const now = Date.now();
    for (const d of this.deadlines.values()) {
      if (d.endAt > now) continue;
      await this.timedOut(d.namespace, d.id).catch((err: unknown) => {
        if (!(err instanceof MoatError && err.code === 404)) this.log.error({ err, sandbox: d.id }, 'e2b timeout failed');
      });
    }
  }
}

const cannotPause = () =>
  new MoatError(
    501,
    'NotImplemented',
    'this Moat runs sandboxes on Kubernetes, which cannot freeze a pod, so E2B pause (and lifecycle.onTimeout "pause") is not available; Moat\'s hibernate keeps a sandbox\'s volumes instead (docs/kubernetes.md)',
  );

/** E2B knows two states: a Moat sandbox that is paused or hibernated (by idle reclaim, say) is `paused` there. */
export const isPaused = (s: E2bSandbox) => s.sandbox?.status.phase === 'Paused' || s.sandbox?.status.phase === 'Hibernated';

/** Where a key's E2B sandboxes (and templates) go: its agent's namespace, or its user's default agent's. */
export function homeNamespace(p: Principal): string {
  const agent = p.agent ?? DEFAULT_AGENT;
  const ns = [...p.namespaces].find(([, a]) => a === agent)?.[0];
  if (!ns) throw new MoatError(403, 'Forbidden', `user "${p.user}" has no namespace for agent "${agent}" to create sandboxes in`);
  return ns;
}

/** CPU, memory and disk as E2B reports them. */
export function resources(s: Sandbox) {
  const l = resolveLimits(s.spec);
  return {
    cpuCount: Math.max(1, Math.round(l.cpuMillicores / 1000)),
    memoryMB: Math.round(l.memoryBytes / 2 ** 20),
    diskSizeMB: Math.round(l.diskBytes / 2 ** 20),
  };
}
