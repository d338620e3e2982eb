// Wire types of the Moat REST API (docs/api.md). Those with a schema in
// @moat/core, and its constants, are generated into wire.gen.ts, so the SDK
// depends on nothing but the wire format; the rest are declared here.
import { LABELS, type ObjectMeta, type ResourceList, type SandboxSpec, type SandboxStatus, type SANDBOX_API_VERSION } from './wire.gen.js';

export * from './wire.gen.js';

/** The label on a sandbox made for a SandboxClaim: the claim's name. */
export const CLAIM_LABEL = LABELS.claim;

/** Any Kubernetes-style object (used by the generic resource client). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

export type Quantity = NonNullable<ResourceList['cpu']>;

export type SandboxPhase = SandboxStatus['phase'];

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
