import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  MoatError, RUNTIME_CLASSES, SANDBOX_API_VERSION, alreadyExists, assertName, badRequest, conflict, invalid, notFound,
  randomSuffix, resolveLimits, timeout, type Sandbox, type SandboxInput, type SandboxStatus,
} from '@moat/core';
import type { ImageStore, RuntimeDriver, SandboxRuntimeSpec } from '@moat/runtime';
import type { Logger } from 'pino';
import type { Store, StoredSandbox } from '../store/store.js';
import { isReady, readyCondition, withCondition } from './conditions.js';

export interface Drivers {
  get(name: string): RuntimeDriver | undefined;
  /** Why a runtime class cannot be used here, or undefined when it can. */
  unavailable(name: string): string | undefined;
}

/**
 * Converges sandboxes: the store holds what users asked for, the runtime
 * drivers hold what runs. Every change for one sandbox is serialised, and a
 * restart re-adopts what runs and removes what no record points to.
 */
export class SandboxController {
  private readonly changes = new EventEmitter();
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly store: Store,
    private readonly images: ImageStore,
    private readonly drivers: Drivers,
    private readonly log: Logger,
  ) {
    this.changes.setMaxListeners(0);
  }

  async create(namespace: string, input: SandboxInput): Promise<Sandbox> {
    const meta = input.metadata;
    if (meta.namespace && meta.namespace !== namespace) {
      throw badRequest(`metadata.namespace "${meta.namespace}" does not match the namespace in the path "${namespace}"`);
    }
    if (!meta.name && !meta.generateName) throw badRequest('metadata.name or metadata.generateName is required');
    const name = meta.name ? assertName(meta.name, 'metadata.name') : assertName(`${meta.generateName}${randomSuffix()}`, 'metadata.generateName');
    const pod = input.spec.podTemplate.spec;
    const runtime = pod.runtimeClassName ?? 'runc';
    if (!(RUNTIME_CLASSES as readonly string[]).includes(runtime)) {
      throw invalid(`spec.podTemplate.spec.runtimeClassName: unknown runtime "${runtime}"; use one of ${RUNTIME_CLASSES.join(', ')}`);
    }
    const why = this.drivers.unavailable(runtime);
    if (why) throw invalid(`runtime "${runtime}" is not available on this host: ${why}`);
    resolveLimits(input.spec); // rejects bad quantities before anything is stored
    const imageName = pod.containers[0]!.image;
    const known = await this.images.knownNames();
    if (!known.includes(imageName)) {
      throw notFound(`image "${imageName}" not found; known images: ${known.join(', ')}`, { kind: 'images', name: imageName, known });
    }
    if (await this.store.getSandbox(namespace, name)) {
      throw alreadyExists(`sandbox "${name}" already exists in namespace "${namespace}"`, { name, kind: 'sandboxes' });
    }
    const sandbox: Sandbox = {
      apiVersion: SANDBOX_API_VERSION,
      kind: 'Sandbox',
      metadata: {
        name,
        namespace,
        uid: randomUUID(),
        creationTimestamp: new Date().toISOString(),
        resourceVersion: '1',
        ...(meta.labels ? { labels: meta.labels } : {}),
        ...(meta.annotations ? { annotations: meta.annotations } : {}),
      },
      spec: input.spec,
      status: { phase: 'Pending', conditions: [readyCondition('False', 'Creating', 'the sandbox is being created')], runtimeClassName: runtime },
    };
    try {
      await this.store.insertSandbox(sandbox);
    } catch (err) {
      if (String(err).includes('UNIQUE')) throw alreadyExists(`sandbox "${name}" already exists in namespace "${namespace}"`);
      throw err;
    }
    void this.serial(sandbox.metadata.uid, () => this.start(sandbox));
    return sandbox;
  }

  async get(namespace: string, name: string): Promise<StoredSandbox> {
    const s = await this.store.getSandbox(namespace, name);
    if (!s) throw notFound(`sandbox "${name}" not found in namespace "${namespace}"`, { name, kind: 'sandboxes' });
    return s;
  }

  async list(namespace?: string, labelSelector?: string): Promise<Sandbox[]> {
    const match = parseSelector(labelSelector);
    return (await this.store.listSandboxes(namespace)).map((s) => s.sandbox).filter((s) => match(s.metadata.labels ?? {}));
  }

  async delete(namespace: string, name: string, wait = false): Promise<Sandbox> {
    const { sandbox } = await this.get(namespace, name);
    const uid = sandbox.metadata.uid;
    await this.store.setDesired(uid, 'Deleted');
    const terminating = await this.setStatus(sandbox, {
      ...sandbox.status,
      phase: 'Terminating',
      conditions: withCondition(sandbox.status, readyCondition('False', 'Deleting', 'the sandbox is being deleted')).conditions,
    });
    const done = this.serial(uid, () => this.teardown(sandbox));
    if (wait) await done;
    return terminating ?? sandbox;
  }

  /** The driver of a sandbox that can take exec and file calls now. */
  async running(namespace: string, name: string): Promise<{ sandbox: Sandbox; driver: RuntimeDriver }> {
    const { sandbox, desired } = await this.get(namespace, name);
    if (desired === 'Deleted') throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
    if (sandbox.status.phase !== 'Running') {
      throw conflict(`sandbox "${name}" is ${sandbox.status.phase}, not Running${sandbox.status.phase === 'Pending' ? ': wait for it to be Ready' : ''}`);
    }
    return { sandbox, driver: this.driverFor(sandbox) };
  }

  async waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<Sandbox> {
    if (condition !== 'Ready') throw badRequest(`unknown condition "${condition}": only Ready can be waited for`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = await this.store.getSandbox(namespace, name);
      if (!found || found.desired === 'Deleted') throw notFound(`sandbox "${name}" not found in namespace "${namespace}"`);
      const s = found.sandbox;
      if (isReady(s.status)) return s;
      if (s.status.phase === 'Failed') {
        const c = s.status.conditions.find((x) => x.type === 'Ready');
        throw new MoatError(409, 'SandboxFailed', `sandbox "${name}" failed: ${c?.message ?? 'unknown error'}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw timeout(`timed out waiting for sandbox "${name}" to be Ready (phase ${s.status.phase})`);
      await this.nextChange(s.metadata.uid, left);
    }
  }

  events(uid: string) {
    return this.store.events(uid);
  }

  driverFor(s: Sandbox): RuntimeDriver {
    const name = s.status.runtimeClassName ?? 'runc';
    const d = this.drivers.get(name);
    if (!d) throw conflict(`runtime "${name}" of sandbox "${s.metadata.name}" is not available on this host`);
    return d;
  }

  /**
   * After a restart: finish deletes, re-adopt running sandboxes, restart those
   * whose processes died with the host, and remove host state nothing points to.
   */
  async recover(): Promise<void> {
    const stored = await this.store.listSandboxes();
    const known = new Set(stored.map((s) => s.sandbox.metadata.uid));
    await Promise.all(
      stored.map(({ sandbox, desired }) =>
        this.serial(sandbox.metadata.uid, async () => {
          if (desired === 'Deleted') return this.teardown(sandbox);
          const state = await this.driverFor(sandbox).state(sandbox.metadata.uid).catch(() => 'missing' as const);
          if (state === 'running' && sandbox.status.phase === 'Running') {
            this.log.info({ sandbox: sandbox.metadata.name }, 're-adopted running sandbox');
            return;
          }
          await this.store.addEvent(sandbox, { type: 'Warning', reason: 'Restarting', message: `found ${state} after a control-plane restart; starting it again with its disks` });
          return this.start(sandbox);
        }),
      ),
    );
    for (const name of ['runc', 'gvisor', 'microvm']) {
      const driver = this.drivers.get(name);
      if (!driver) continue;
      for (const id of await driver.listIds()) {
        if (known.has(id)) continue;
        this.log.warn({ id, runtime: name }, 'removing orphaned sandbox state');
        await driver.destroy(id).catch((err) => this.log.error({ err, id }, 'orphan cleanup failed'));
      }
    }
  }

  // --- internals

  private async start(sandbox: Sandbox): Promise<void> {
    const uid = sandbox.metadata.uid;
    const started = Date.now();
    try {
      const container = sandbox.spec.podTemplate.spec.containers[0]!;
      const digest = sandbox.status.image?.digest;
      // A restart reuses the exact image the sandbox was created from.
      const image = digest
        ? await this.images.byDigest(digest)
        : await this.images.ensure(container.image, (line) => this.log.info({ image: container.image }, line));
      const spec: SandboxRuntimeSpec = {
        id: uid,
        hostname: sandbox.metadata.name,
        image,
        limits: resolveLimits(sandbox.spec),
        command: [...(container.command ?? []), ...(container.args ?? [])],
        env: Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value ?? ''])),
        workingDir: container.workingDir ?? '/',
      };
      await this.driverFor(sandbox).create(spec);
      if ((await this.store.getSandboxByUid(uid))?.desired !== 'Running') return; // deleted meanwhile: teardown follows
      const status: SandboxStatus = {
        ...sandbox.status,
        phase: 'Running',
        startTime: new Date().toISOString(),
        image: { name: image.name, digest: image.digest },
      };
      await this.setStatus(sandbox, withCondition(status, readyCondition('True', 'SandboxRunning', '')));
      await this.store.addEvent(sandbox, { type: 'Normal', reason: 'Started', message: `started in ${Date.now() - started} ms from ${image.digest}` });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error({ err, sandbox: sandbox.metadata.name }, 'sandbox failed to start');
      await this.driverFor(sandbox).destroy(uid).catch(() => {});
      const status = withCondition({ ...sandbox.status, phase: 'Failed' }, readyCondition('False', 'StartFailed', message));
      await this.setStatus(sandbox, status);
      await this.store.addEvent(sandbox, { type: 'Warning', reason: 'Failed', message });
    }
  }

  private async teardown(sandbox: Sandbox): Promise<void> {
    await this.driverFor(sandbox).destroy(sandbox.metadata.uid);
    await this.store.deleteSandbox(sandbox.metadata.uid);
    this.changes.emit(sandbox.metadata.uid);
  }

  private async setStatus(sandbox: Sandbox, status: SandboxStatus) {
    sandbox.status = status;
    const updated = await this.store.setStatus(sandbox.metadata.uid, status);
    this.changes.emit(sandbox.metadata.uid);
    return updated;
  }

  private nextChange(uid: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.changes.off(uid, done);
        resolve();
      };
      const t = setTimeout(done, Math.min(ms, 1000));
      this.changes.on(uid, done);
    });
  }

  private serial<T>(uid: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(uid) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.locks.set(uid, tail);
    void tail.then(() => {
      if (this.locks.get(uid) === tail) this.locks.delete(uid);
    });
    return next;
  }
}

/** `k=v,k2=v2` and `k!=v` equality selectors, as kubectl's -l. */
function parseSelector(sel?: string): (labels: Record<string, string>) => boolean {
  if (!sel) return () => true;
  const terms = sel.split(',').map((t) => {
    const m = /^\s*([^!=\s]+)\s*(!=|==|=)\s*([^\s]*)\s*$/.exec(t);
    if (!m) throw badRequest(`invalid labelSelector term "${t}": use key=value or key!=value`);
    return { key: m[1]!, neg: m[2] === '!=', value: m[3]! };
  });
  return (labels) => terms.every((t) => (labels[t.key] === t.value) !== t.neg);
}
