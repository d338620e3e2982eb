import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CONDITION,
  EVENT_REASON,
  LABELS,
  REASON,
  MoatError,
  RUNTIME_CLASSES,
  SANDBOX_API_VERSION,
  type Container,
  alreadyExists,
  assertName,
  badRequest,
  conflict,
  invalid,
  notFound,
  randomSuffix,
  resolveLimits,
  sandboxPath,
  validateEgressPolicy,
  timeout,
  type Sandbox,
  type SandboxInput,
  type SandboxSpec,
  type SandboxStatus,
} from '@moat/core';
import type { DialOptions, ExecHandle, ExecHandlers, ExecRequest, Image, RuntimeDriver, SandboxAgent, SandboxRuntimeSpec, Usage } from '@moat/runtime';
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { Sandboxes } from '../../types.js';
import { isUniqueViolation } from '../../../store/errors.js';
import { isLive, type Desired, type Store, type StoredSandbox } from '../../../store/store.js';
import { isReady, readyCondition, withCondition } from './conditions.js';
import { portNumber, runProbe } from './probes.js';
import { parseSelector } from './selector.js';
import { Serial } from '../../../util/serial.js';
import { crashPoint } from '../../../faults.js';
import type { Activity } from './activity.js';
import { checkIdlePolicy, isExpired } from './rules.js';
import { exposedPorts, imageEnv, imageProcess } from './image-config.js';
import { IdRanges } from '../id-ranges.js';

/** Labels only Moat's controllers may set: they decide pool membership and ownership. */
const RESERVED_LABELS = [LABELS.pool, LABELS.claim, LABELS.adoptedFrom];

export interface CreateOptions {
  /** Set by the pool and claim controllers: allows the reserved labels. */
  internal?: boolean;
  /**
   * A restore of a writable-layer backup: the sandbox runs this image digest (409 when it is no longer in the
   * image store), and `disk` puts its writable layer at `path` (the driver's `disk.img`) before anything is
   * stored; the first start uses it as it is. A failure there leaves nothing behind.
   */
  restore?: { imageDigest: string; disk: (path: string) => Promise<void> };
}

/** What tenancy adds to sandboxes (see tenancy.ts). */
export interface Tenancy {
  /** Runs `insert` only if the namespace's owner may have one more sandbox like `spec` (quotas, secret references). */
  admit<T>(namespace: string, spec: SandboxSpec, insert: () => Promise<T>): Promise<T>;
  /** What the sandbox's processes get beyond its spec: the gateway's address and a fresh token, secrets it exposes. */
  env(sandbox: Sandbox): Promise<Record<string, string>>;
}

/** Named volumes (volumes/service.ts): attached when a sandbox is created, its /data at start, released at teardown. */
export interface SandboxVolumes {
  bind(sandbox: Sandbox): Promise<void>;
  forSandbox(sandboxUid: string): Promise<{ path: string; sizeBytes: number } | undefined>;
  release(sandboxUid: string): Promise<void>;
  /** Best effort, bounded: `sync` inside a sandbox that may still run. */
  flush(agent: SandboxAgent): Promise<void>;
}

/** The images sandboxes start from (images/service.ts). */
export interface SandboxImages {
  /** Pins what a container's `image` names to a digest (404 with the known names when it names nothing). */
  resolve(namespace: string, container: Pick<Container, 'image' | 'imagePullPolicy'>): Promise<{ name: string; digest: string }>;
  /** The pinned image, ready to mount (its layers pulled again if they were collected). */
  materialize(namespace: string, pinned: { name: string; digest: string }, progress?: (line: string) => void): Promise<Image>;
  readonly content: { has(digest: string): Promise<boolean> };
}

/** Each sandbox's own network namespace and the egress proxy it reaches (server/network.ts). */
export interface SandboxNetwork {
  readonly proxyUrl: string;
  attach(uid: string): Promise<{ address: string }>;
  detach(uid: string): Promise<void>;
  netnsPath(uid: string): string;
  /** Whether the sandbox's namespace exists (a hibernation keeps it; only a host reboot loses it). */
  attached(uid: string): boolean;
  /** What every sandbox process gets to find the proxy. */
  env(): Record<string, string>;
  /** Removes the namespaces of sandboxes not in `knownUids`. */
  cleanup(knownUids: string[]): Promise<void>;
}

export interface Drivers {
  get(name: string): RuntimeDriver | undefined;
  /** Every driver that works on this host. */
  all(): RuntimeDriver[];
  /** Why a runtime class cannot be used here, or undefined when it can. */
  unavailable(name: string): string | undefined;
}

/**
 * Converges sandboxes: the store holds what users asked for (the desired state: Running, Paused, Hibernated or
 * Deleted), the runtime drivers hold what runs. One reconcile per sandbox takes the host from what it is to what
 * is desired, serialised per sandbox; the verbs (pause, hibernate, ...) check what the caller may ask, record the
 * desire and run that reconcile. After a restart the same reconcile re-adopts what runs, finishes what a crash
 * cut short, and recover() removes what no record points to.
 */
export class SandboxController implements Sandboxes {
  private readonly changes = new EventEmitter();
  private readonly locks = new Serial();
  /**
   * A bound on starts at once keeps the host (and the API) responsive. A start mostly waits on the kernel (a
   * network namespace, two ext4 mounts) rather than on a core, so 8 keep a 2-core host busy without piling up.
   */
  private readonly starts = new PQueue({ concurrency: 8 });
  /** Pool members' starts (refills), one at a time, so claims and execs keep a core while a pool fills. */
  private readonly backgroundStarts = new PQueue({ concurrency: 1 });
  private readonly probing = new Set<string>();
  /** Adopted sandboxes whose hostname is being changed. */
  private readonly renaming = new Map<string, Promise<void>>();
  private stopped = false;

  /** Each sandbox's own host uid/gid range, from its first start until its deletion. */
  private readonly ids: IdRanges;

  constructor(
    private readonly store: Store,
    private readonly images: SandboxImages,
    private readonly drivers: Drivers,
    private readonly network: SandboxNetwork,
    private readonly log: Logger,
    private readonly tenancy: Tenancy,
    private readonly activity: Activity,
    /** Exec and file calls to a paused sandbox resume it first; false answers them 409 instead. */
    private readonly resumeOnUse = true,
    /** Named volumes; without them every sandbox has its own /data only. */
    private readonly volumes?: SandboxVolumes,
  ) {
    this.changes.setMaxListeners(0);
    this.ids = new IdRanges(store);
  }

  /** Whoever reacts to sandboxes (pools, lifecycle) hears of every change, by uid: a watch, not a call. */
  onChange(listener: (uid: string) => void): void {
    this.changes.on('change', listener);
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
    const container = input.spec.podTemplate.spec.containers[0]!;
    const restoreDigest = opts.restore?.imageDigest;
    if (restoreDigest && !(await this.images.content.has(restoreDigest))) {
      throw conflict(
        `image "${container.image}" at ${restoreDigest}, which the backup was taken from, is no longer in the image store: the writable layer only fits that image, so it cannot be restored`,
      );
    }
    // Pinned now, so a tag that moves later never changes this sandbox or its restarts.
    const image = restoreDigest ? { name: container.image, digest: restoreDigest } : await this.images.resolve(namespace, container);
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
      status: {
        phase: 'Pending',
        conditions: [readyCondition('False', REASON.Creating, 'the sandbox is being created')],
        runtimeClassName: runtime,
        image,
      },
    };
    if (opts.restore) {
      // Before the record: a crash from here on leaves only a host directory, removed as an orphan at the next start.
      try {
        await opts.restore.disk(this.driverFor(sandbox).writableLayer(sandbox.metadata.uid).image);
        crashPoint('restore.staged');
      } catch (err) {
        await this.driverFor(sandbox)
          .destroy(sandbox.metadata.uid)
          .catch(() => {});
        throw err;
      }
    }
    try {
      await this.tenancy.admit(namespace, sandbox.spec, async () => {
        await this.store.insertSandbox(sandbox);
        // Its named volume, made or attached now so a conflict (attached elsewhere) is the create's answer.
        await this.volumes?.bind(sandbox).catch(async (err: unknown) => {
          await this.store.deleteSandbox(sandbox.metadata.uid);
          throw err;
        });
      });
    } catch (err) {
      if (opts.restore)
        await this.driverFor(sandbox)
          .destroy(sandbox.metadata.uid)
          .catch(() => {});
      if (isUniqueViolation(err)) throw alreadyExists(`sandbox "${name}" already exists in namespace "${namespace}"`);
      throw err;
    }
    crashPoint('create.inserted');
    void this.sync(sandbox.metadata.uid);
    return sandbox;
  }

  /**
   * Hand an unclaimed pool member to a claim: it takes the claim's name,
   * metadata and spec, atomically, so no two claims can get one sandbox.
   * Undefined when the member is gone or was taken meanwhile.
   */
  async adopt(
    member: Sandbox,
    to: { name: string; labels: Record<string, string>; annotations: Record<string, string>; spec: SandboxSpec },
  ): Promise<Sandbox | undefined> {
    const uid = member.metadata.uid;
    return this.locks.run(uid, async () => {
      let adopted: Sandbox | undefined;
      try {
        adopted = await this.store.adoptSandbox(uid, member.metadata.name, to);
      } catch (err) {
        if (isUniqueViolation(err)) throw alreadyExists(`a sandbox named "${to.name}" already exists in namespace "${member.metadata.namespace}"`);
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
      void this.store.addEvent(adopted, {
        type: 'Normal',
        reason: EVENT_REASON.Claimed,
        message: `taken from warm pool "${member.metadata.labels?.[LABELS.pool]}" (was ${member.metadata.name})`,
      });
      this.emit(uid);
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
    if (spec.idlePolicy) checkIdlePolicy(spec.idlePolicy, 'spec.idlePolicy');
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
    crashPoint('delete.marked');
    const terminating = await this.setStatus(sandbox, {
      ...sandbox.status,
      phase: 'Terminating',
      conditions: withCondition(sandbox.status, readyCondition('False', REASON.Deleting, 'the sandbox is being deleted')).conditions,
    });
    const done = this.sync(uid);
    if (wait) await done;
    return terminating ?? sandbox;
  }

  /** A sandbox that can take exec and file calls now, and its agent; a paused or hibernated one is resumed or woken first. */
  async running(namespace: string, name: string): Promise<{ sandbox: Sandbox; agent: SandboxAgent }> {
    const { sandbox, desired } = await this.get(namespace, name);
    if (!isLive(desired)) throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
    const pool = sandbox.metadata.labels?.[LABELS.pool];
    if (pool) throw conflict(`sandbox "${name}" waits unclaimed in warm pool "${pool}"; claim one with a SandboxClaim to use it`);
    await this.renaming.get(sandbox.metadata.uid);
    this.activity.touch(sandbox.metadata.uid);
    if (sandbox.status.phase === 'Paused') {
      if (!this.resumeOnUse) throw conflict(`sandbox "${name}" is paused: resume it first`);
      return { sandbox: await this.resume(namespace, name), agent: this.agent(sandbox) };
    }
    if (sandbox.status.phase === 'Hibernated') {
      if (!this.resumeOnUse) throw conflict(`sandbox "${name}" is hibernated: wake it first`);
      return { sandbox: await this.wake(namespace, name), agent: this.agent(sandbox) };
    }
    if (sandbox.status.phase !== 'Running') {
      throw conflict(`sandbox "${name}" is ${sandbox.status.phase}, not Running${sandbox.status.phase === 'Pending' ? ': wait for it to be Ready' : ''}`);
    }
    return { sandbox, agent: this.agent(sandbox) };
  }

  /** The sandbox's agent; a running command or an open dial counts as use (idle reclaim), for as long as it lasts. */
  agent(sandbox: Sandbox): SandboxAgent {
    const uid = sandbox.metadata.uid;
    const agent = this.driverFor(sandbox).agent(uid);
    const activity = this.activity;
    return Object.assign(Object.create(agent) as SandboxAgent, {
      exec(req: ExecRequest, handlers?: ExecHandlers): ExecHandle {
        const release = activity.hold(uid);
        const handle = agent.exec(req, handlers);
        handle.done.then(release, release);
        return handle;
      },
      async dial(port: number, opts?: DialOptions): Promise<Duplex> {
        const socket = await agent.dial(port, opts);
        socket.once('close', activity.hold(uid));
        return socket;
      },
    });
  }

  async usage(sandbox: Sandbox): Promise<Usage | undefined> {
    return this.driverFor(sandbox)
      .usage(sandbox.metadata.uid)
      .catch(() => undefined);
  }

  async logs(sandbox: Sandbox): Promise<string> {
    return readFile(this.driverFor(sandbox).logPath(sandbox.metadata.uid), 'utf8').catch(() => '');
  }

  /** Freezes every process of a running sandbox; its memory stays allocated. Pausing a paused sandbox is a no-op. */
  pause(namespace: string, name: string): Promise<Sandbox> {
    return this.desire(namespace, name, 'Paused', 'paused', ['Running']);
  }

  /** Thaws a paused sandbox; one with a readiness probe is Ready once the probe passes again. Resuming a running sandbox is a no-op. */
  resume(namespace: string, name: string): Promise<Sandbox> {
    return this.desire(namespace, name, 'Running', 'resumed', ['Paused']);
  }

  /**
   * Saves the processes and memory of a running or paused sandbox to disk and
   * frees its memory; where the runtime cannot checkpoint the workload, stops it
   * keeping its disks (condition Hibernated, reason StoppedWithDisks). The
   * network namespace (and so the address) is kept. Hibernating a hibernated sandbox is a no-op.
   */
  hibernate(namespace: string, name: string): Promise<Sandbox> {
    return this.desire(namespace, name, 'Hibernated', 'hibernated', ['Running', 'Paused']);
  }

  /** Restores a hibernated sandbox (its processes and memory, or a fresh start on its disks). Waking a running sandbox is a no-op. */
  wake(namespace: string, name: string): Promise<Sandbox> {
    return this.desire(namespace, name, 'Running', 'woken', ['Hibernated'], (s) => {
      if (isExpired(s))
        throw conflict(
          `sandbox "${name}" shut down at its shutdownTime ${s.spec.shutdownTime}: extend it (\`moat sandbox extend ${name} --ttl 1h\`) to use it again`,
        );
    });
  }

  /**
   * shutdownPolicy Retain at the shutdownTime: the sandbox is hibernated (its
   * memory freed, its disks and record kept) and stays so until an extend.
   */
  async expire(namespace: string, name: string): Promise<Sandbox> {
    return this.exclusive(namespace, name, 'expired', async (s) => {
      if (s.status.phase === 'Running' || s.status.phase === 'Paused') s = await this.converge(s.metadata.uid, 'Hibernated');
      const expired = withCondition(
        withCondition(s.status, {
          type: CONDITION.Expired,
          status: 'True',
          reason: REASON.ShutdownTimeReached,
          message: `shut down at ${s.spec.shutdownTime}; extend it to use it again`,
          lastTransitionTime: new Date().toISOString(),
        }),
        readyCondition('False', REASON.SandboxExpired, `the sandbox expired at ${s.spec.shutdownTime}`),
      );
      return (await this.setStatus(s, expired)) ?? s;
    });
  }

  /** An extend of an expired sandbox: it wakes again. */
  async revive(namespace: string, name: string): Promise<Sandbox> {
    const revived = await this.exclusive(namespace, name, 'revived', async (s) => {
      if (!isExpired(s)) return s;
      const status = withCondition(s.status, {
        type: CONDITION.Expired,
        status: 'False',
        reason: REASON.Extended,
        message: `extended to ${s.spec.shutdownTime}`,
        lastTransitionTime: new Date().toISOString(),
      });
      return (await this.setStatus(s, status)) ?? s;
    });
    return revived.status.phase === 'Hibernated' ? this.wake(namespace, name) : revived;
  }

  /**
   * Runs `act` under the sandbox's lock once it is known to exist, not deleted and not a pool member: no start,
   * pause, resume, hibernate, wake or delete of it meanwhile (a backup of its writable layer uses it too).
   */
  async exclusive<T>(namespace: string, name: string, verb: string, act: (s: Sandbox) => Promise<T>): Promise<T> {
    const uid = (await this.get(namespace, name)).sandbox.metadata.uid;
    return this.locks.run(uid, async () => {
      const { sandbox, desired } = await this.get(namespace, name);
      if (!isLive(desired) || sandbox.metadata.uid !== uid) throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
      const pool = sandbox.metadata.labels?.[LABELS.pool];
      if (pool) throw conflict(`sandbox "${name}" waits unclaimed in warm pool "${pool}": only claimed sandboxes are ${verb}`);
      return act(sandbox);
    });
  }

  /** Sets when the sandbox shuts down (the lifecycle controller acts on it). Not under the lock: a start may hold it for long. */
  async setShutdownTime(namespace: string, name: string, shutdownTime: string): Promise<Sandbox> {
    const { sandbox, desired } = await this.get(namespace, name);
    if (!isLive(desired)) throw notFound(`sandbox "${name}" is being deleted`, { name, kind: 'sandboxes' });
    const updated = await this.store.updateSandboxSpec(sandbox.metadata.uid, (spec) => ({ ...spec, shutdownTime }));
    if (!updated) throw notFound(`sandbox "${name}" not found in namespace "${namespace}"`, { name, kind: 'sandboxes' });
    this.emit(sandbox.metadata.uid);
    return updated;
  }

  async waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<Sandbox> {
    if (condition !== CONDITION.Ready) throw badRequest(`unknown condition "${condition}": only Ready can be waited for`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = await this.store.getSandbox(namespace, name);
      if (!found || !isLive(found.desired)) throw notFound(`sandbox "${name}" not found in namespace "${namespace}"`);
      const s = found.sandbox;
      if (isReady(s.status)) return s;
      if (s.status.phase === 'Failed') {
        const c = s.status.conditions.find((x) => x.type === CONDITION.Ready);
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
   * After a restart: reconcile every sandbox against what the host has (finish deletes, re-adopt running
   * sandboxes, restart those whose processes died with the host), then remove host state nothing points to.
   */
  async recover(): Promise<void> {
    const stored = await this.store.listSandboxes();
    const known = new Set(stored.map((s) => s.sandbox.metadata.uid));
    await Promise.all(stored.map(({ sandbox }) => this.sync(sandbox.metadata.uid, { restarted: true })));
    for (const driver of this.drivers.all()) {
      for (const id of await driver.listIds()) {
        if (known.has(id)) continue;
        this.log.warn({ id, runtime: driver.name }, 'removing orphaned sandbox state');
        await driver.destroy(id).catch((err) => this.log.error({ err, id }, 'orphan cleanup failed'));
      }
    }
    await this.network.cleanup([...known]);
    await this.ids.cleanup(known);
  }

  // --- the reconcile

  /** Reconciles one sandbox under its lock. */
  private sync(uid: string, opts: { restarted?: boolean } = {}): Promise<void> {
    return this.locks.run(uid, async () => void (await this.reconcile(uid, opts)));
  }

  /**
   * A verb: under the lock, checks that the sandbox is in a phase the verb applies to (`to`'s phase itself is a
   * no-op), records the desire and converges to it.
   */
  private desire(
    namespace: string,
    name: string,
    to: Exclude<Desired, 'Deleted'>,
    verb: string,
    from: SandboxStatus['phase'][],
    check?: (s: Sandbox) => void,
  ): Promise<Sandbox> {
    return this.exclusive(namespace, name, verb, async (sandbox) => {
      if (sandbox.status.phase === to) return sandbox;
      if (!from.includes(sandbox.status.phase)) {
        throw conflict(`sandbox "${name}" is ${sandbox.status.phase}: only a ${from.join(' or ')} sandbox can be ${verb}`);
      }
      check?.(sandbox);
      return this.converge(sandbox.metadata.uid, to);
    });
  }

  /** Under the lock: record `desired` and reconcile to it; the sandbox as it then is. */
  private async converge(uid: string, desired: Desired): Promise<Sandbox> {
    await this.store.setDesired(uid, desired);
    const s = await this.reconcile(uid);
    const now = s && (await this.store.getSandboxByUid(uid));
    if (!now) throw notFound(`sandbox ${uid} is gone`);
    return now.sandbox;
  }

  /**
   * The one path that changes a sandbox on the host (under its lock): from its recorded phase (and, after a
   * restart, what the host shows) to its desired state. Level-based and idempotent: running it again changes nothing.
   */
  private async reconcile(uid: string, opts: { restarted?: boolean } = {}): Promise<Sandbox | undefined> {
    const found = await this.store.getSandboxByUid(uid);
    if (!found) return undefined;
    const { sandbox, desired } = found;
    if (desired === 'Deleted') {
      await this.teardown(sandbox);
      return undefined;
    }
    if (opts.restarted) await this.observe(sandbox);
    const phase = sandbox.status.phase;
    if (phase === 'Pending') await (sandbox.metadata.labels?.[LABELS.pool] ? this.backgroundStarts : this.starts).add(() => this.start(sandbox));
    else if (desired === 'Running' && phase === 'Paused') await this.resumeStep(sandbox);
    else if (desired === 'Running' && phase === 'Hibernated' && !isExpired(sandbox)) await this.wakeStep(sandbox);
    else if (desired === 'Paused' && phase === 'Running') await this.pauseStep(sandbox);
    else if (desired === 'Hibernated' && (phase === 'Running' || phase === 'Paused')) await this.hibernateStep(sandbox);
    return sandbox;
  }

  /**
   * After a restart, the record is brought in line with the host where a crash cut a step short, and a sandbox
   * whose processes died with the host is started again on its disks.
   */
  private async observe(sandbox: Sandbox): Promise<void> {
    const driver = this.driverFor(sandbox);
    const uid = sandbox.metadata.uid;
    const state = await driver.state(uid).catch(() => 'missing' as const);
    const phase = sandbox.status.phase;
    const live = state === 'running' || state === 'paused';
    if (phase === 'Hibernated' || ((phase === 'Running' || phase === 'Paused') && !live && (await driver.hibernated(uid)))) {
      return this.recoverHibernated(sandbox, driver, state);
    }
    if (live && (phase === 'Running' || phase === 'Paused')) {
      // A pause or resume the crash cut short: the host follows the record, then the desire.
      if (state === 'running' && phase === 'Paused') await driver.pause(uid);
      if (state === 'paused' && phase === 'Running') await driver.resume(uid);
      this.log.info({ sandbox: sandbox.metadata.name, phase }, 're-adopted sandbox');
      if (phase === 'Running' && !isReady(sandbox.status)) this.probeUntilReady(sandbox);
      return;
    }
    await this.store.addEvent(sandbox, {
      type: 'Warning',
      reason: EVENT_REASON.Restarting,
      message: `found ${state} after a control-plane restart; starting it again with its disks`,
    });
    await this.start(sandbox);
  }

  /**
   * A hibernated sandbox after a restart: stopped, it stays hibernated. Running
   * again, a wake was cut short after the restore: it is Running. A complete
   * checkpoint under a Running or Paused record is a hibernate cut short after
   * the save: the record follows the host (Hibernated).
   */
  private async recoverHibernated(sandbox: Sandbox, driver: RuntimeDriver, state: string): Promise<void> {
    const uid = sandbox.metadata.uid;
    if (state === 'running' || state === 'paused') {
      if (state === 'paused') await driver.resume(uid);
      await this.setStatus(sandbox, withCondition({ ...sandbox.status, phase: 'Running' }, readyCondition('True', REASON.SandboxRunning, '')));
      await this.store.addEvent(sandbox, {
        type: 'Normal',
        reason: EVENT_REASON.Woken,
        message: 'found running after a control-plane restart (a wake was cut short)',
      });
      return;
    }
    if (sandbox.status.phase !== 'Hibernated') {
      const status = withCondition(
        withCondition(
          { ...sandbox.status, phase: 'Hibernated' },
          readyCondition('False', REASON.Hibernated, 'the sandbox is hibernated: exec, file calls and port connections wake it'),
        ),
        {
          type: CONDITION.Hibernated,
          status: 'True',
          reason: REASON.Checkpointed,
          message: 'processes and memory saved to disk (found after a control-plane restart)',
          lastTransitionTime: new Date().toISOString(),
        },
      );
      await this.setStatus(sandbox, status);
      await this.store.addEvent(sandbox, {
        type: 'Normal',
        reason: EVENT_REASON.Hibernated,
        message: 'a hibernate cut short by a control-plane restart had saved the sandbox: it stays hibernated',
      });
    }
    this.log.info({ sandbox: sandbox.metadata.name }, 'sandbox stays hibernated');
  }

  // --- the steps a reconcile takes; each sets the status it reaches and records an event

  private async start(sandbox: Sandbox): Promise<void> {
    const uid = sandbox.metadata.uid;
    if (!isLive((await this.store.getSandboxByUid(uid))?.desired ?? 'Deleted')) return; // deleted while it waited for a start slot
    const started = Date.now();
    let attaching: Promise<unknown> | undefined;
    try {
      // The network is made while the image is found and the driver prepares the disks; the sandbox starts once both are done.
      const network = this.network.attach(uid);
      attaching = network.catch(() => {});
      const spec = await this.runtimeSpec(sandbox);
      const image = spec.image;
      const container = sandbox.spec.podTemplate.spec.containers[0]!;
      const driver = this.driverFor(sandbox);
      await driver.create(spec, { ready: network });
      crashPoint('start.created');
      const net = await network;
      if (!isLive((await this.store.getSandboxByUid(uid))?.desired ?? 'Deleted')) return; // deleted meanwhile: teardown follows
      const degraded = await driver.degraded?.();
      const base: SandboxStatus = degraded
        ? withCondition(sandbox.status, {
            type: CONDITION.RuntimeDegraded,
            status: 'True',
            reason: REASON.SoftwareEmulation,
            message: degraded,
            lastTransitionTime: new Date().toISOString(),
          })
        : sandbox.status;
      const ports = exposedPorts(image.config);
      const status: SandboxStatus = {
        ...base,
        phase: 'Running',
        network: { address: net.address, proxy: this.network.proxyUrl },
        startTime: new Date().toISOString(),
        image: {
          name: sandbox.status.image?.name ?? image.name,
          digest: image.digest,
          ...(image.config.Env?.length ? { env: imageEnv(image.config) } : {}),
          // `/` is no WORKDIR: execs then start where they always have (the user's home).
          ...(image.config.WorkingDir && image.config.WorkingDir !== '/' ? { workingDir: image.config.WorkingDir } : {}),
          ...(ports.length ? { ports } : {}),
        },
      };
      const probe = container.readinessProbe;
      await this.setStatus(
        sandbox,
        withCondition(
          status,
          probe
            ? readyCondition('False', REASON.ReadinessProbePending, 'waiting for the readiness probe to pass')
            : readyCondition('True', REASON.SandboxRunning, ''),
        ),
      );
      await this.store.addEvent(sandbox, {
        type: 'Normal',
        reason: EVENT_REASON.Started,
        message: `started in ${Date.now() - started} ms from ${image.digest}`,
      });
      if (probe) this.probeUntilReady(sandbox);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error({ err, sandbox: sandbox.metadata.name }, 'sandbox failed to start');
      await this.driverFor(sandbox)
        .destroy(uid)
        .catch(() => {});
      await attaching; // never undo a network that is still being made
      await this.network.detach(uid).catch(() => {});
      const status = withCondition({ ...sandbox.status, phase: 'Failed' }, readyCondition('False', REASON.StartFailed, message));
      await this.setStatus(sandbox, status);
      await this.store.addEvent(sandbox, { type: 'Warning', reason: EVENT_REASON.Failed, message });
    }
  }

  private async pauseStep(sandbox: Sandbox): Promise<void> {
    const started = Date.now();
    await this.driverFor(sandbox).pause(sandbox.metadata.uid);
    await this.setStatus(sandbox, withCondition({ ...sandbox.status, phase: 'Paused' }, readyCondition('False', REASON.Paused, 'the sandbox is paused')));
    await this.store.addEvent(sandbox, { type: 'Normal', reason: EVENT_REASON.Paused, message: `paused in ${Date.now() - started} ms` });
  }

  private async resumeStep(sandbox: Sandbox): Promise<void> {
    const started = Date.now();
    await this.driverFor(sandbox).resume(sandbox.metadata.uid);
    await this.setStatus(sandbox, withCondition({ ...sandbox.status, phase: 'Running' }, this.runningCondition(sandbox)));
    await this.store.addEvent(sandbox, { type: 'Normal', reason: EVENT_REASON.Resumed, message: `resumed in ${Date.now() - started} ms` });
    if (!isReady(sandbox.status)) this.probeUntilReady(sandbox);
  }

  private async hibernateStep(sandbox: Sandbox): Promise<void> {
    const started = Date.now();
    const r = await this.driverFor(sandbox).hibernate(sandbox.metadata.uid);
    crashPoint('hibernate.saved');
    const ms = Date.now() - started;
    const now = new Date().toISOString();
    const condition = r.checkpointed
      ? {
          type: CONDITION.Hibernated,
          status: 'True' as const,
          reason: REASON.Checkpointed,
          message: `processes and memory saved to disk (${r.bytes} bytes)`,
          lastTransitionTime: now,
        }
      : {
          type: CONDITION.Hibernated,
          status: 'True' as const,
          reason: REASON.StoppedWithDisks,
          message: `stopped with its disks kept; memory was not saved: ${r.reason}`,
          lastTransitionTime: now,
        };
    const status = withCondition(
      withCondition(
        { ...sandbox.status, phase: 'Hibernated' },
        readyCondition('False', REASON.Hibernated, 'the sandbox is hibernated: exec, file calls and port connections wake it'),
      ),
      condition,
    );
    await this.setStatus(sandbox, status);
    await this.store.addEvent(
      sandbox,
      r.checkpointed
        ? { type: 'Normal', reason: EVENT_REASON.Hibernated, message: `hibernated in ${ms} ms: ${r.bytes} bytes of processes and memory saved` }
        : { type: 'Warning', reason: EVENT_REASON.HibernatedWithoutMemory, message: `stopped in ${ms} ms with its disks kept; memory not saved: ${r.reason}` },
    );
  }

  private async wakeStep(sandbox: Sandbox): Promise<void> {
    const uid = sandbox.metadata.uid;
    const started = Date.now();
    // The namespace outlives a hibernation; only a host reboot loses it (then it is made again, with the same lease).
    const network = this.network.attached(uid) ? Promise.resolve() : this.network.attach(uid);
    const r = await this.driverFor(sandbox).wake(await this.runtimeSpec(sandbox), { ready: network });
    crashPoint('wake.restored');
    const ms = Date.now() - started;
    const now = new Date().toISOString();
    const status = withCondition(
      withCondition({ ...sandbox.status, phase: 'Running' }, this.runningCondition(sandbox)),
      r.restored
        ? { type: CONDITION.Hibernated, status: 'False', reason: REASON.Restored, message: 'woken with its processes and memory', lastTransitionTime: now }
        : { type: CONDITION.Hibernated, status: 'False', reason: REASON.Restarted, message: r.reason, lastTransitionTime: now },
    );
    await this.setStatus(sandbox, status);
    await this.store.addEvent(sandbox, {
      type: r.restored ? 'Normal' : 'Warning',
      reason: EVENT_REASON.Woken,
      message: r.restored ? `woken in ${ms} ms with its processes and memory` : `woken in ${ms} ms without its memory: ${r.reason}`,
    });
    if (!isReady(sandbox.status)) this.probeUntilReady(sandbox);
  }

  /**
   * What the driver needs to start (or wake) the sandbox. A restart reuses the exact image it was created from. */
  private async runtimeSpec(sandbox: Sandbox): Promise<SandboxRuntimeSpec> {
    const uid = sandbox.metadata.uid;
    const container = sandbox.spec.podTemplate.spec.containers[0]!;
    // Sandboxes made before images were pinned at create pin theirs at their first start.
    const pinned = sandbox.status.image ?? (await this.images.resolve(sandbox.metadata.namespace, container));
    const image = await this.images.materialize(sandbox.metadata.namespace, pinned, (line) => this.log.info({ image: pinned.name }, line));
    const volume = await this.volumes?.forSandbox(uid);
    return {
      id: uid,
      hostname: sandbox.metadata.name,
      image,
      limits: { ...resolveLimits(sandbox.spec), ...(volume ? { dataBytes: volume.sizeBytes } : {}) },
      ...(volume ? { dataImage: volume.path } : {}),
      ...imageProcess(image.config, container),
      env: {
        ...imageEnv(image.config),
        ...this.network.env(),
        ...Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value ?? ''])),
        ...(await this.tenancy.env(sandbox)),
      },
      dataMountPath: container.volumeMounts?.[0]?.mountPath,
      netnsPath: this.network.netnsPath(uid),
      ids: await this.ids.forSandbox(uid),
    };
  }

  /** Ready at once, or once its readiness probe passes. */
  private runningCondition(sandbox: Sandbox) {
    return sandbox.spec.podTemplate.spec.containers[0]!.readinessProbe
      ? readyCondition('False', REASON.ReadinessProbePending, 'waiting for the readiness probe to pass')
      : readyCondition('True', REASON.SandboxRunning, '');
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
            await this.setStatus(current, withCondition(current.status, readyCondition('True', REASON.SandboxRunning, '')));
            await this.store.addEvent(current, { type: 'Normal', reason: EVENT_REASON.Ready, message: 'the readiness probe passed' });
            return;
          }
        } catch (err) {
          successes = 0;
          if (++failures === failureThreshold) {
            const message = `readiness probe failing: ${(err as Error).message}`;
            await this.setStatus(current, withCondition(current.status, readyCondition('False', REASON.ReadinessProbeFailing, message)));
            await this.store.addEvent(current, { type: 'Warning', reason: EVENT_REASON.Unhealthy, message });
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
    // A named volume may outlive the sandbox: what was written must reach its image first (a microVM's guest cache).
    const uid = sandbox.metadata.uid;
    if (
      (await this.volumes?.forSandbox(uid)) &&
      (await this.driverFor(sandbox)
        .state(uid)
        .catch(() => 'missing')) === 'running'
    )
      await this.volumes!.flush(this.driverFor(sandbox).agent(uid));
    await this.driverFor(sandbox).destroy(sandbox.metadata.uid);
    crashPoint('teardown.destroyed');
    // Only once nothing of the sandbox runs or is mounted may another get its ids.
    await this.ids.release(sandbox.metadata.uid);
    await this.volumes?.release(sandbox.metadata.uid); // kept or deleted by its retention policy, once nothing mounts it
    await this.network.detach(sandbox.metadata.uid);
    crashPoint('teardown.detached');
    await this.store.deleteSandbox(sandbox.metadata.uid);
    this.activity.forget(sandbox.metadata.uid);
    this.emit(sandbox.metadata.uid);
  }

  private async setStatus(sandbox: Sandbox, status: SandboxStatus) {
    sandbox.status = status;
    const updated = await this.store.setStatus(sandbox.metadata.uid, status);
    this.emit(sandbox.metadata.uid);
    return updated;
  }

  private emit(uid: string): void {
    this.changes.emit(uid);
    this.changes.emit('change', uid);
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

/** The one volume (volumeClaimTemplates[0], or a named one in volumes[0]) may be mounted at another path than /data. */
function checkVolumeMount(spec: SandboxSpec): void {
  const claim = spec.podTemplate.spec.volumes?.[0];
  if (claim && spec.volumeClaimTemplates?.length)
    throw invalid('spec: give volumeClaimTemplates or podTemplate.spec.volumes, not both: a sandbox has one volume');
  if (claim) assertName(claim.persistentVolumeClaim.claimName, 'spec.podTemplate.spec.volumes[0].persistentVolumeClaim.claimName');
  const template = spec.volumeClaimTemplates?.[0]?.metadata.name;
  if (template) assertName(template, 'spec.volumeClaimTemplates[0].metadata.name');
  const mount = spec.podTemplate.spec.containers[0]!.volumeMounts?.[0];
  if (!mount) return;
  const field = 'spec.podTemplate.spec.containers[0].volumeMounts[0]';
  const volume = spec.volumeClaimTemplates?.[0]?.metadata.name ?? spec.podTemplate.spec.volumes?.[0]?.name;
  if (mount.name !== volume)
    throw invalid(`${field}: no volumeClaimTemplate is named "${mount.name}"${volume ? ` (the sandbox's volume is "${volume}")` : ''}`);
  sandboxPath(mount.mountPath, `${field}.mountPath`);
  if (
    ['/', '/proc', '/sys', '/dev', '/tmp', '/.moat', '/etc', '/usr', '/bin', '/lib'].some((p) => mount.mountPath === p || mount.mountPath.startsWith('/.moat/'))
  ) {
    throw invalid(`${field}.mountPath: ${mount.mountPath} is not allowed`);
  }
}
