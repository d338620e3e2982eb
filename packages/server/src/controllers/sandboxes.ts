import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  LABELS, MoatError, RUNTIME_CLASSES, SANDBOX_API_VERSION, alreadyExists, assertName, badRequest, conflict, invalid, notFound,
  randomSuffix, resolveLimits, sandboxPath, validateEgressPolicy, timeout, type Sandbox, type SandboxInput, type SandboxSpec, type SandboxStatus,
} from '@moat/core';
import type { ImageStore, RuntimeDriver, SandboxRuntimeSpec } from '@moat/runtime';
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { Networking } from '../network.js';
import type { Store, StoredSandbox } from '../store/store.js';
import { isReady, readyCondition, withCondition } from './conditions.js';
import { portNumber, runProbe } from './probes.js';
import { parseSelector } from './selector.js';
import { Serial } from './serial.js';

/** Labels only Moat's controllers may set: they decide pool membership and ownership. */
const RESERVED_LABELS = [LABELS.pool, LABELS.claim, LABELS.adoptedFrom];

export interface CreateOptions {
  /** Set by the pool and claim controllers: allows the reserved labels. */
  internal?: boolean;
  /** Pool refills: started one at a time, beside the sandboxes someone is waiting for. */
  background?: boolean;
}

/** What tenancy adds to sandboxes (see identity/tenancy.ts). */
export interface Tenancy {
  /** Runs `insert` only if the namespace's owner may have one more sandbox like `spec` (quotas, secret references). */
  admit<T>(namespace: string, spec: SandboxSpec, insert: () => Promise<T>): Promise<T>;
  /** What the sandbox's processes get beyond its spec: the gateway's address and a fresh token, secrets it exposes. */
  env(sandbox: Sandbox): Promise<Record<string, string>>;
}

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
  private readonly locks = new Serial();
  /** Starts are CPU and I/O heavy: a few at a time keeps the host (and the API) responsive. */
  private readonly starts = new PQueue({ concurrency: 4 });
  /** Pool refills, one at a time, so claims and execs keep a core while a pool fills. */
  private readonly backgroundStarts = new PQueue({ concurrency: 1 });
  private readonly probing = new Set<string>();
  /** Adopted sandboxes whose hostname is being changed. */
  private readonly renaming = new Map<string, Promise<void>>();
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly images: ImageStore,
    private readonly drivers: Drivers,
    private readonly network: Networking,
    private readonly log: Logger,
    private readonly tenancy: Tenancy,
    /** Exec and file calls to a paused sandbox resume it first; false answers them 409 instead. */
    private readonly resumeOnUse = true,
  ) {
    this.changes.setMaxListeners(0);
  }

  async create(namespace: string, input: SandboxInput, opts: CreateOptions = {}): Promise<Sandbox> {
    const meta = input.metadata;
    const reserved = RESERVED_LABELS.filter((l) => meta.labels?.[l] !== undefined || meta.annotations?.[l] !== undefined);
    if (reserved.length && !opts.internal) throw badRequest(`metadata: "${reserved[0]}" is set by Moat and cannot be given`);
    if (meta.namespace && meta.namespace !== namespace) {
      throw badRequest(`metadata.namespace "${meta.namespace}" does not match the namespace in the path "${namespace}"`);
    }
    if (!meta.name && !meta.generateName) throw badRequest('metadata.name or metadata.generateName is required');
    const name = meta.name ? assertName(meta.name, 'metadata.name') : assertName(`${meta.generateName}${randomSuffix()}`, 'metadata.generateName');
    const runtime = this.validateSpec(input.spec);
    const imageName = input.spec.podTemplate.spec.containers[0]!.image;
    const known = await this.images.knownNames();
    if (!known.includes(imageName)) {
      throw new MoatError(404, 'ImageNotFound', `image "${imageName}" not found; known images: ${known.join(', ')}`, { kind: 'images', name: imageName, known });
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
      await this.tenancy.admit(namespace, sandbox.spec, () => this.store.insertSandbox(sandbox));
    } catch (err) {
      if (String(err).includes('UNIQUE')) throw alreadyExists(`sandbox "${name}" already exists in namespace "${namespace}"`);
      throw err;
    }
    const queue = opts.background ? this.backgroundStarts : this.starts;
    void this.locks.run(sandbox.metadata.uid, () => queue.add(() => this.start(sandbox)));
    return sandbox;
  }

  /**
   * Hand an unclaimed pool member to a claim: it takes the claim's name,
   * metadata and spec, atomically, so no two claims can get one sandbox.
   * Undefined when the member is gone or was taken meanwhile.
   */
  async adopt(member: Sandbox, to: { name: string; labels: Record<string, string>; annotations: Record<string, string>; spec: SandboxSpec }): Promise<Sandbox | undefined> {
    const uid = member.metadata.uid;
    return this.locks.run(uid, async () => {
      let adopted: Sandbox | undefined;
      try {
        adopted = await this.store.adoptSandbox(uid, member.metadata.name, to);
      } catch (err) {
        if (String(err).includes('UNIQUE')) throw alreadyExists(`a sandbox named "${to.name}" already exists in namespace "${member.metadata.namespace}"`);
        throw err;
      }
      if (!adopted) return undefined;
      // The hostname is set while the claim's answer travels; exec and files wait for it (see running()).
      const renaming = this.driverFor(adopted)
        .setHostname(uid, to.name)
        .catch(async (err: unknown) => {
          // A sandbox that cannot take its new identity must not be used.
          this.log.error({ err, sandbox: to.name }, 'could not rename an adopted sandbox');
          await this.store.setDesired(uid, 'Deleted');
          await this.locks.run(uid, () => this.teardown(adopted));
          throw conflict(`sandbox "${to.name}" could not take its identity and was removed: ${(err as Error).message}`);
        })
        .finally(() => this.renaming.delete(uid));
      this.renaming.set(uid, renaming);
      void renaming.catch(() => {});
      void this.store.addEvent(adopted, { type: 'Normal', reason: 'Claimed', message: `taken from warm pool "${member.metadata.labels?.[LABELS.pool]}" (was ${member.metadata.name})` });
      this.changes.emit(uid);
      return adopted;
    });
  }

  /** Stops background work (queued starts, probes) before the store closes; running sandboxes stay up. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const q of [this.starts, this.backgroundStarts]) q.clear();
    await Promise.all([this.starts.onIdle(), this.backgroundStarts.onIdle()]);
  }

  /** Checks what can be checked without starting anything; returns the runtime class. Templates use it too. */
  validateSpec(spec: SandboxSpec): string {
    const runtime = spec.podTemplate.spec.runtimeClassName ?? 'runc';
    if (!(RUNTIME_CLASSES as readonly string[]).includes(runtime)) {
      throw invalid(`spec.podTemplate.spec.runtimeClassName: unknown runtime "${runtime}"; use one of ${RUNTIME_CLASSES.join(', ')}`);
    }
    const why = this.drivers.unavailable(runtime);
    if (why) throw invalid(`runtime "${runtime}" is not available on this host: ${why}`);
    resolveLimits(spec); // rejects bad quantities before anything is stored
    if (spec.egressPolicy) validateEgressPolicy(spec.egressPolicy, 'spec.egressPolicy');
    checkProbe(spec);
    checkVolumeMount(spec);
    return runtime;
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
    const done = this.locks.run(uid, () => this.teardown(sandbox));
    if (wait) await done;
    return terminating ?? sandbox;
  }

  /** The driver of a sandbox that can take exec and file calls now. */
  async running(namespace: string, name: string): Promise<{ sandbox: Sandbox; driver: RuntimeDriver }> {
    const { sandbox, desired } = await this.get(namespace, name);
    if (desired === 'Deleted') throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
    const pool = sandbox.metadata.labels?.[LABELS.pool];
    if (pool) throw conflict(`sandbox "${name}" waits unclaimed in warm pool "${pool}"; claim one with a SandboxClaim to use it`);
    await this.renaming.get(sandbox.metadata.uid);
    if (sandbox.status.phase === 'Paused') {
      if (!this.resumeOnUse) throw conflict(`sandbox "${name}" is paused: resume it first`);
      return { sandbox: await this.resume(namespace, name), driver: this.driverFor(sandbox) };
    }
    if (sandbox.status.phase !== 'Running') {
      throw conflict(`sandbox "${name}" is ${sandbox.status.phase}, not Running${sandbox.status.phase === 'Pending' ? ': wait for it to be Ready' : ''}`);
    }
    return { sandbox, driver: this.driverFor(sandbox) };
  }

  /** Freezes every process of a running sandbox; its memory stays allocated. Pausing a paused sandbox is a no-op. */
  pause(namespace: string, name: string): Promise<Sandbox> {
    return this.transition(namespace, name, 'Paused', async (sandbox, driver) => {
      await driver.pause(sandbox.metadata.uid);
      return withCondition({ ...sandbox.status, phase: 'Paused' }, readyCondition('False', 'Paused', 'the sandbox is paused'));
    });
  }

  /** Thaws a paused sandbox; one with a readiness probe is Ready once the probe passes again. Resuming a running sandbox is a no-op. */
  async resume(namespace: string, name: string): Promise<Sandbox> {
    const resumed = await this.transition(namespace, name, 'Running', async (sandbox, driver) => {
      await driver.resume(sandbox.metadata.uid);
      const probe = sandbox.spec.podTemplate.spec.containers[0]!.readinessProbe;
      return withCondition(
        { ...sandbox.status, phase: 'Running' },
        probe ? readyCondition('False', 'ReadinessProbePending', 'waiting for the readiness probe to pass') : readyCondition('True', 'SandboxRunning', ''),
      );
    });
    if (!isReady(resumed.status)) this.probeUntilReady(resumed);
    return resumed;
  }

  /** Pause and resume: under the sandbox's lock, from the one phase to the other, with an event. */
  private async transition(namespace: string, name: string, to: 'Paused' | 'Running', act: (s: Sandbox, d: RuntimeDriver) => Promise<SandboxStatus>): Promise<Sandbox> {
    const from = to === 'Paused' ? 'Running' : 'Paused';
    const uid = (await this.get(namespace, name)).sandbox.metadata.uid;
    return this.locks.run(uid, async () => {
      const { sandbox, desired } = await this.get(namespace, name);
      if (desired === 'Deleted' || sandbox.metadata.uid !== uid) throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
      const pool = sandbox.metadata.labels?.[LABELS.pool];
      if (pool) throw conflict(`sandbox "${name}" waits unclaimed in warm pool "${pool}": only claimed sandboxes are paused`);
      if (sandbox.status.phase === to) return sandbox;
      if (sandbox.status.phase !== from) throw conflict(`sandbox "${name}" is ${sandbox.status.phase}: only a ${from} sandbox can be ${to === 'Paused' ? 'paused' : 'resumed'}`);
      const started = Date.now();
      const updated = await this.setStatus(sandbox, await act(sandbox, this.driverFor(sandbox)));
      await this.store.addEvent(sandbox, { type: 'Normal', reason: to === 'Paused' ? 'Paused' : 'Resumed', message: `${to === 'Paused' ? 'paused' : 'resumed'} in ${Date.now() - started} ms` });
      return updated ?? sandbox;
    });
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
        this.locks.run(sandbox.metadata.uid, async () => {
          if (desired === 'Deleted') return this.teardown(sandbox);
          const driver = this.driverFor(sandbox);
          const uid = sandbox.metadata.uid;
          const state = await driver.state(uid).catch(() => 'missing' as const);
          const phase = sandbox.status.phase;
          if ((state === 'running' || state === 'paused') && (phase === 'Running' || phase === 'Paused')) {
            // A pause or resume the crash cut short: the host follows the store.
            if (state === 'running' && phase === 'Paused') await driver.pause(uid);
            if (state === 'paused' && phase === 'Running') await driver.resume(uid);
            this.log.info({ sandbox: sandbox.metadata.name, phase }, 're-adopted sandbox');
            if (phase === 'Running' && !isReady(sandbox.status)) this.probeUntilReady(sandbox);
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
    await this.network.cleanup([...known]);
  }

  // --- internals

  private async start(sandbox: Sandbox): Promise<void> {
    const uid = sandbox.metadata.uid;
    if ((await this.store.getSandboxByUid(uid))?.desired !== 'Running') return; // deleted while it waited for a start slot
    const started = Date.now();
    let attaching: Promise<unknown> | undefined;
    try {
      const container = sandbox.spec.podTemplate.spec.containers[0]!;
      const digest = sandbox.status.image?.digest;
      // A restart reuses the exact image the sandbox was created from.
      const image = digest
        ? await this.images.byDigest(digest)
        : await this.images.ensure(container.image, (line) => this.log.info({ image: container.image }, line));
      // The network is made while the driver prepares the disks; the sandbox starts once both are done.
      const network = this.network.attach(uid);
      attaching = network.catch(() => {});
      const spec: SandboxRuntimeSpec = {
        id: uid,
        hostname: sandbox.metadata.name,
        image,
        limits: resolveLimits(sandbox.spec),
        command: [...(container.command ?? []), ...(container.args ?? [])],
        env: { ...this.network.env(), ...Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value ?? ''])), ...(await this.tenancy.env(sandbox)) },
        workingDir: container.workingDir ?? '/',
        dataMountPath: container.volumeMounts?.[0]?.mountPath,
        netnsPath: this.network.netnsPath(uid),
      };
      const driver = this.driverFor(sandbox);
      await driver.create(spec, { ready: network });
      const net = await network;
      if ((await this.store.getSandboxByUid(uid))?.desired !== 'Running') return; // deleted meanwhile: teardown follows
      const degraded = await driver.degraded?.();
      const base: SandboxStatus = degraded
        ? withCondition(sandbox.status, { type: 'RuntimeDegraded', status: 'True', reason: 'SoftwareEmulation', message: degraded, lastTransitionTime: new Date().toISOString() })
        : sandbox.status;
      const status: SandboxStatus = {
        ...base,
        phase: 'Running',
        network: { address: net.address, proxy: this.network.proxyUrl },
        startTime: new Date().toISOString(),
        image: { name: image.name, digest: image.digest },
      };
      const probe = container.readinessProbe;
      await this.setStatus(
        sandbox,
        withCondition(status, probe ? readyCondition('False', 'ReadinessProbePending', 'waiting for the readiness probe to pass') : readyCondition('True', 'SandboxRunning', '')),
      );
      await this.store.addEvent(sandbox, { type: 'Normal', reason: 'Started', message: `started in ${Date.now() - started} ms from ${image.digest}` });
      if (probe) this.probeUntilReady(sandbox);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error({ err, sandbox: sandbox.metadata.name }, 'sandbox failed to start');
      await this.driverFor(sandbox).destroy(uid).catch(() => {});
      await attaching; // never undo a network that is still being made
      await this.network.detach(uid).catch(() => {});
      const status = withCondition({ ...sandbox.status, phase: 'Failed' }, readyCondition('False', 'StartFailed', message));
      await this.setStatus(sandbox, status);
      await this.store.addEvent(sandbox, { type: 'Warning', reason: 'Failed', message });
    }
  }

  /**
   * Probes in the background (never under the sandbox's lock, so a delete is
   * not held up) until the probe passes or the sandbox stops running.
   */
  private probeUntilReady(sandbox: Sandbox): void {
    const uid = sandbox.metadata.uid;
    const probe = sandbox.spec.podTemplate.spec.containers[0]!.readinessProbe;
    if (!probe || this.probing.has(uid)) return;
    this.probing.add(uid);
    const period = (probe.periodSeconds ?? 10) * 1000;
    const threshold = probe.successThreshold ?? 1;
    const failureThreshold = probe.failureThreshold ?? 3;
    void (async () => {
      await sleep((probe.initialDelaySeconds ?? 0) * 1000);
      let successes = 0;
      let failures = 0;
      for (let attempt = 0; !this.stopped; attempt++) {
        const found = await this.store.getSandboxByUid(uid);
        if (!found || found.desired !== 'Running' || found.sandbox.status.phase !== 'Running') return;
        const current = found.sandbox;
        try {
          await runProbe(this.driverFor(current).agent(uid), current, probe);
          if (++successes >= threshold) {
            await this.setStatus(current, withCondition(current.status, readyCondition('True', 'SandboxRunning', '')));
            await this.store.addEvent(current, { type: 'Normal', reason: 'Ready', message: 'the readiness probe passed' });
            return;
          }
        } catch (err) {
          successes = 0;
          if (++failures === failureThreshold) {
            const message = `readiness probe failing: ${(err as Error).message}`;
            await this.setStatus(current, withCondition(current.status, readyCondition('False', 'ReadinessProbeFailing', message)));
            await this.store.addEvent(current, { type: 'Warning', reason: 'Unhealthy', message });
          }
        }
        // Until the first success, probe faster than the period: a warm pool wants sandboxes ready as soon as they are.
        await sleep(attempt < 50 ? Math.min(period, 100) : period);
      }
    })()
      .catch((err: unknown) => this.log.error({ err, uid }, 'readiness probing stopped'))
      .finally(() => this.probing.delete(uid));
  }

  private async teardown(sandbox: Sandbox): Promise<void> {
    await this.driverFor(sandbox).destroy(sandbox.metadata.uid);
    await this.network.detach(sandbox.metadata.uid);
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

}

function checkProbe(spec: SandboxSpec): void {
  const c = spec.podTemplate.spec.containers[0]!;
  const probe = c.readinessProbe;
  if (!probe) return;
  const field = 'spec.podTemplate.spec.containers[0].readinessProbe';
  const kinds = [probe.exec, probe.httpGet, probe.tcpSocket].filter(Boolean).length;
  if (kinds !== 1) throw invalid(`${field}: give exactly one of exec, httpGet or tcpSocket`);
  const port = probe.httpGet?.port ?? probe.tcpSocket?.port;
  const host = probe.httpGet?.host ?? probe.tcpSocket?.host;
  if (host && !['localhost', '127.0.0.1'].includes(host)) throw invalid(`${field}: host must be localhost: probes run inside the sandbox`);
  if (port !== undefined) {
    try {
      portNumber({ spec } as Sandbox, port);
    } catch (err) {
      throw invalid(`${field}: ${(err as Error).message}`);
    }
  }
}

/** The one volume (volumeClaimTemplates[0]) may be mounted at another path than /data. */
function checkVolumeMount(spec: SandboxSpec): void {
  const mount = spec.podTemplate.spec.containers[0]!.volumeMounts?.[0];
  if (!mount) return;
  const field = 'spec.podTemplate.spec.containers[0].volumeMounts[0]';
  const volume = spec.volumeClaimTemplates?.[0]?.metadata.name;
  if (mount.name !== volume) throw invalid(`${field}: no volumeClaimTemplate is named "${mount.name}"${volume ? ` (the sandbox's volume is "${volume}")` : ''}`);
  sandboxPath(mount.mountPath, `${field}.mountPath`);
  if (['/', '/proc', '/sys', '/dev', '/tmp', '/.moat', '/etc', '/usr', '/bin', '/lib'].some((p) => mount.mountPath === p || mount.mountPath.startsWith('/.moat/'))) {
    throw invalid(`${field}.mountPath: ${mount.mountPath} is not allowed`);
  }
}
