import type { RuntimeClassName, SandboxLimits } from '@moat/core';
import type { AgentClient } from '../agent/index.js';
import type { Usage } from '../cgroups.js';
import type { Image } from '../images/image.js';
import type { IdRange } from '../userns.js';

/** What a driver needs to run one sandbox; saved with it so a restart can recreate it. */
export interface SandboxRuntimeSpec {
  /** Stable unique id (the sandbox's uid): names the container, cgroup and host directory. */
  id: string;
  hostname: string;
  image: Image;
  limits: SandboxLimits;
  command: string[];
  /** The image's USER (`name`, `uid`, `uid:gid`): the main command and execs that name no user run as it. */
  user?: string;
  env: Record<string, string>;
  workingDir: string;
  /** Where the persistent volume appears inside; /data unless the spec mounts it elsewhere. */
  dataMountPath?: string;
  /** A named volume's ext4 image to use for /data instead of the sandbox's own `data.img`; never deleted by destroy. */
  dataImage?: string;
  /** A network namespace made for the sandbox (see net/); without it the sandbox has loopback only. */
  netnsPath?: string;
  /** The host ids the sandbox runs as (userns.ts): its own, allocated by the caller and kept until it is deleted. */
  ids: IdRange;
}

export interface CreateOptions {
  /** Awaited just before the sandbox starts, so the caller's own preparation (its network) overlaps the driver's. */
  ready?: Promise<unknown>;
}

export type RuntimeState = 'running' | 'paused' | 'stopped' | 'missing';

/** What `hibernate` kept: the processes and their memory, or (when they cannot be saved) only the disks. */
export type HibernateResult =
  | { checkpointed: true; /** Size of the saved state on disk. */ bytes: number }
  | { checkpointed: false; /** Why the processes could not be saved; the sandbox was stopped with its disks kept. */ reason: string };

/** What `wake` did: restored the saved processes, or started the sandbox again on its disks (and why). */
export type WakeResult = { restored: true } | { restored: false; reason: string };

/**
 * What every driver is made from. A driver derives all its folders from these roots itself (and makes
 * them in `check`), so the server needs to know none of them.
 */
export interface DriverContext {
  /** The server's data directory: each driver keeps its sandboxes and state in folders of its own under it. */
  root: string;
  /** Shared by every server on the host (the image cache): a driver keeps its caches in a folder of its own under it. */
  cacheDir: string;
  /** moat-init; `defaultInitBinary()` when not given. */
  initBinary?: string;
  /** moat-hostname; `defaultHostnameHelper()` when not given. */
  hostnameHelper?: string;
  /** moat-idmap; `defaultIdmapHelper()` when not given. */
  idmapHelper?: string;
  /** Long first-time work (downloads, test boots) is reported here, one line at a time. */
  progress?: (line: string) => void;
}

/** What a backup copies: the sandbox's data image (its volume) or its writable layer (`disk.img`). */
export type DiskKind = 'data' | 'layer';

/** What `quiesce` and `thaw` know of the sandbox from its record. */
export interface QuiesceContext {
  /** The sandbox is running (not paused, hibernated or stopped), as its record says. */
  running: boolean;
  /** Where the sandbox mounts its data image inside. */
  dataMountPath: string;
  /** A failure after the copy (letting the sandbox go on) does not fail the copy: it is reported here. */
  warn(err: unknown, message: string): void;
}

/**
 * A sandbox's disk could not be held still for a copy. `refused`: not in the state the sandbox is in; the
 * message then says what to do ("resume it..."). Otherwise the attempt failed.
 */
export class QuiesceError extends Error {
  constructor(
    message: string,
    readonly refused = false,
  ) {
    super(message);
    this.name = 'QuiesceError';
  }
}

export interface RuntimeDriver {
  readonly name: RuntimeClassName;
  /**
   * Throws an Error that says what to install when the runtime cannot work on this host; otherwise makes the
   * driver's folders under its root (so a runtime that cannot work here leaves nothing on the host).
   */
  check(): Promise<void>;
  /** Long first-time work (a kernel download, a test boot) the server starts in the background once `check` passed. */
  prepare?(): Promise<unknown>;
  /** Start the sandbox; reuses its disks when they exist (a restart after a crash). Resolves once exec works. */
  create(spec: SandboxRuntimeSpec, opts?: CreateOptions): Promise<void>;
  /** Remove everything the sandbox has on the host. Idempotent. */
  destroy(id: string): Promise<void>;
  state(id: string): Promise<RuntimeState>;
  /** Freeze every process of the sandbox; its memory stays allocated. Idempotent. */
  pause(id: string): Promise<void>;
  /** Thaw a paused sandbox. Idempotent. */
  resume(id: string): Promise<void>;
  /**
   * Save every process and its memory under the sandbox's directory and stop it, freeing its memory
   * (the network namespace is left alone). When the runtime cannot checkpoint the workload, stop it
   * keeping its disks instead. The saved state survives a control-plane restart (see `hibernated`).
   */
  hibernate(id: string): Promise<HibernateResult>;
  /** Restore a hibernated sandbox from its saved state; without one (or when it cannot be restored), start it on its kept disks. */
  wake(spec: SandboxRuntimeSpec, opts?: CreateOptions): Promise<WakeResult>;
  /** Whether a complete saved state (checkpoint) is on the host for this sandbox. */
  hibernated(id: string): Promise<boolean>;
  /** Give a running sandbox a new hostname (a pooled sandbox takes its claimer's name). */
  setHostname(id: string, hostname: string): Promise<void>;
  /** Ids of every sandbox with anything on the host, for adoption and orphan cleanup. */
  listIds(): Promise<string[]>;
  agent(id: string): AgentClient;
  usage(id: string): Promise<Usage>;
  logPath(id: string): string;
  /** The sandbox's writable layer: its ext4 image (`disk.img`, kept across restarts; one put there before the first start is used as it is). */
  writableLayer(id: string): { image: string };
  /**
   * Runs `copy` (which reads the sandbox's data image or writable layer on the host) while nothing can change
   * that image, and lets the sandbox go on after. Throws a QuiesceError when it cannot.
   */
  quiesce<T>(id: string, what: DiskKind, copy: () => Promise<T>, ctx: QuiesceContext): Promise<T>;
  /** After a crash: undoes a `quiesce` that was cut short. Idempotent, best effort and bounded. */
  thaw(id: string, what: DiskKind, ctx: QuiesceContext): Promise<void>;
  /** Why this runtime runs worse than it should on this host (microVMs without KVM), if it does: shown in sandbox status. */
  degraded?(): Promise<string | undefined>;
  /** How the runtime runs here, for /info (gVisor's platform), once `check` passed. */
  describe?(): string;
}
