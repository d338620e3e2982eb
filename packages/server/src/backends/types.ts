import { MoatError, type Sandbox, type SandboxClaim, type SandboxInput, type SandboxTemplate, type SandboxWarmPool } from '@moat/core';
import type { SandboxAgent, Usage } from '@moat/runtime';
import type { SandboxEvent, StoredSandbox } from '../store/store.js';

/**
 * The sandbox backend: the seam where the API routes, the E2B layer, the portal's API and backups meet the
 * thing that runs sandboxes. `local` (backends/local.ts) is Moat's own controllers and runtime drivers on this
 * host; a `kubernetes` backend stands beside it, over the cluster's agent-sandbox controller (docs/architecture.md).
 * Nothing above this seam names a runtime driver or a concrete agent client.
 */
export interface SandboxBackend {
  readonly kind: 'local' | 'kubernetes';
  /** What this backend can do; a route for something it cannot answers 501 with the reason (requireCapability). */
  readonly capabilities: BackendCapabilities;
  /** The runtime classes and whether each can be used here (`warning`: it works, worse than it should). */
  readonly runtimes: Record<string, RuntimeInfo>;
  readonly sandboxes: Sandboxes;
  readonly templates: ExtensionObjects<SandboxTemplate>;
  readonly claims: Claims;
  readonly pools: ExtensionObjects<SandboxWarmPool>;
  /**
   * Whether this server runs the work done once for all replicas (E2B timeouts): always on one host; on a cluster,
   * while it holds the leader Lease. Every replica serves the API either way.
   */
  leads(): boolean;
  /** Stops the backend's background work; what runs keeps running. */
  close(): Promise<void>;
}

export interface BackendCapabilities {
  /** Freeze a sandbox's processes in place (pause and resume). */
  pause: boolean;
  /** Stop a sandbox keeping its disks (and, where the runtime can, its memory), woken on use. */
  hibernate: boolean;
  /** Back up and restore a sandbox's writable layer. */
  layerBackups: boolean;
  /** Named volumes on this host (`moat volume`), and their backups. */
  volumes: boolean;
}

export type Capability = keyof BackendCapabilities;

/** A call for something the backend cannot do: 501, saying which backend and what, instead of a failure deeper down. */
export function requireCapability(backend: Pick<SandboxBackend, 'kind' | 'capabilities'>, capability: Capability, what: string): void {
  if (!backend.capabilities[capability]) {
    throw new MoatError(501, 'NotImplemented', `the ${backend.kind} backend cannot ${what} (capability "${capability}"); see docs/architecture.md`, {
      capability,
    });
  }
}

export interface RuntimeInfo {
  available: boolean;
  reason?: string;
  warning?: string;
  /** How it runs on this host (gVisor: its platform). */
  detail?: string;
}

/** Sandboxes, as the API sees them (the local backend's SandboxController). */
export interface Sandboxes {
  create(namespace: string, input: SandboxInput): Promise<Sandbox>;
  get(namespace: string, name: string): Promise<StoredSandbox>;
  list(namespace?: string, labelSelector?: string): Promise<Sandbox[]>;
  delete(namespace: string, name: string, wait?: boolean): Promise<Sandbox>;
  pause(namespace: string, name: string): Promise<Sandbox>;
  resume(namespace: string, name: string): Promise<Sandbox>;
  hibernate(namespace: string, name: string): Promise<Sandbox>;
  wake(namespace: string, name: string): Promise<Sandbox>;
  /** An extend of an expired sandbox wakes it again. */
  revive(namespace: string, name: string): Promise<Sandbox>;
  setShutdownTime(namespace: string, name: string, shutdownTime: string): Promise<Sandbox>;
  waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<Sandbox>;
  events(uid: string): Promise<SandboxEvent[]>;
  /**
   * A sandbox that can take exec, file and port calls now (a paused or hibernated one is resumed or woken first),
   * and its agent. The call, and every command and dial through the agent while it lasts, count as use (idle reclaim).
   */
  running(namespace: string, name: string): Promise<{ sandbox: Sandbox; agent: SandboxAgent }>;
  /** The agent of a sandbox known to run (the gateway's token refresh). */
  agent(sandbox: Sandbox): SandboxAgent;
  /** Resource use now, if the sandbox runs. */
  usage(sandbox: Sandbox): Promise<Usage | undefined>;
  /** Its main process's output so far. */
  logs(sandbox: Sandbox): Promise<string>;
}

/** SandboxTemplates, SandboxClaims and SandboxWarmPools: Kubernetes-style objects. */
export interface ExtensionObjects<T> {
  readonly kind: string;
  create(namespace: string, input: ObjectInput): Promise<T>;
  replace(namespace: string, name: string, input: ObjectInput): Promise<T>;
  get(namespace: string, name: string): Promise<T>;
  list(namespace?: string, labelSelector?: string): Promise<T[]>;
  delete(namespace: string, name: string, wait?: boolean): Promise<T>;
  waitFor(namespace: string, name: string, condition: string, timeoutMs: number): Promise<T>;
}

export interface Claims extends ExtensionObjects<SandboxClaim> {
  /** Moves the claim's shutdown (and its sandbox's) to `shutdownTime`. */
  extend(namespace: string, name: string, shutdownTime: string): Promise<void>;
}

export interface ObjectInput {
  metadata: { name?: string; generateName?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: unknown;
}
