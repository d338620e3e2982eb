// Wire types of the Moat REST API (docs/api.md). Declared here rather than
// imported from @moat/core so the SDK depends on nothing but the wire format.

export const SANDBOX_API_VERSION = 'agents.x-k8s.io/v1alpha1';
export const EXTENSIONS_API_VERSION = 'extensions.agents.x-k8s.io/v1alpha1';
/** The label on a sandbox made for a SandboxClaim: the claim's name. */
export const CLAIM_LABEL = 'agents.x-k8s.io/claim';
export const MOAT_API_VERSION = 'moat.dev/v1';

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  creationTimestamp?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** Any Kubernetes-style object (used by the generic resource client). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

export type Quantity = string | number;

export interface ResourceList {
  cpu?: Quantity;
  memory?: Quantity;
  'ephemeral-storage'?: Quantity;
  'moat.dev/pids'?: Quantity;
}

export interface Container {
  name?: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string }[];
  workingDir?: string;
  resources?: { limits?: ResourceList; requests?: ResourceList };
}

export interface SandboxSpec {
  podTemplate: {
    metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
    spec: { runtimeClassName?: string; containers: Container[]; [field: string]: unknown };
  };
  volumeClaimTemplates?: {
    metadata: { name: string };
    spec: { resources: { requests: { storage: Quantity } } };
  }[];
  /** When the sandbox shuts down (RFC 3339), and what is kept then. */
  shutdownTime?: string;
  shutdownPolicy?: 'Delete' | 'Retain';
  /** Moat: pause, hibernate and delete after this many seconds without use. */
  idlePolicy?: { pauseAfterSeconds?: number; hibernateAfterSeconds?: number; deleteAfterSeconds?: number };
  [field: string]: unknown;
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
}

export type SandboxPhase = 'Pending' | 'Running' | 'Paused' | 'Hibernated' | 'Failed' | 'Terminating';

export interface SandboxStatus {
  phase: SandboxPhase;
  conditions: Condition[];
  startTime?: string;
  runtimeClassName?: string;
  image?: { name: string; digest: string };
  resourceUsage?: { memoryBytes: number; cpuSeconds: number; pids: number };
}

/** A Sandbox object as served by the API. */
export interface SandboxResource extends KubeObject {
  apiVersion: typeof SANDBOX_API_VERSION;
  kind: 'Sandbox';
  metadata: ObjectMeta & { name: string; namespace: string };
  spec: SandboxSpec;
  status?: SandboxStatus;
}

export interface ObjectList<T> {
  apiVersion?: string;
  kind?: string;
  items: T[];
}

/** Kubernetes-style error body returned with every non-2xx response. */
export interface StatusBody {
  kind: 'Status';
  apiVersion?: string;
  status?: string;
  code?: number;
  reason?: string;
  message?: string;
  details?: Record<string, unknown>;
}

export interface Entry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  mtime: string;
  uid: number;
  gid: number;
  target?: string;
}

export interface Image {
  name: string;
  digest: string;
  sizeBytes: number;
  createdAt: string;
  packages?: string[];
}

export interface Health {
  status: string;
  version: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** 128+N when killed by signal N; 137 when timed out (SIGKILL). */
  exitCode: number;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
}

/** One entry of a sandbox's event list, like a Kubernetes event. */
export interface SandboxEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
  time: string;
}

/** Events of the NDJSON exec stream, with output already base64-decoded. */
export type ExecEvent =
  | { type: 'started'; pid: number }
  | { type: 'stdout'; data: Buffer }
  | { type: 'stderr'; data: Buffer }
  | { type: 'exit'; exitCode: number; signal: string | null; timedOut: boolean; durationMs: number }
  | { type: 'error'; reason: string; message: string };

/** One decision of the egress proxy: a plain HTTP request or a CONNECT tunnel. */
export interface EgressRecord {
  time: string;
  method: string;
  host: string;
  port: number;
  path?: string;
  resolvedAddress?: string;
  allowed: boolean;
  rule?: string;
  reason: string;
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  status?: number;
}
