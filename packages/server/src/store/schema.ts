import type { Generated } from 'kysely';

export interface ApiKeyTable {
  id: string;
  name: string;
  hash: string;
  user: string;
  role: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

/** One row per sandbox: metadata in columns, spec and status as JSON documents. */
export interface SandboxTable {
  uid: string;
  namespace: string;
  name: string;
  labels: string;
  annotations: string;
  spec: string;
  status: string;
  /** Desired state: 'Running' or 'Deleted' (a delete in progress survives a crash). */
  desired: string;
  created_at: string;
  resource_version: number;
}

export interface EventTable {
  id: Generated<number>;
  sandbox_uid: string;
  namespace: string;
  name: string;
  type: string;
  reason: string;
  message: string;
  time: string;
}

/** SandboxTemplate, SandboxClaim and SandboxWarmPool objects. */
export interface ObjectTable {
  uid: string;
  kind: string;
  namespace: string;
  name: string;
  labels: string;
  annotations: string;
  spec: string;
  status: string;
  generation: number;
  resource_version: number;
  created_at: string;
}

/** One /31 per sandbox; the primary key is what keeps addresses unique across restarts. */
export interface LeaseTable {
  address: string;
  sandbox_uid: string;
}

/** Egress proxy decisions, kept after their sandbox is gone. */
export interface EgressLogTable {
  id: Generated<number>;
  time: string;
  sandbox_uid: string | null;
  namespace: string | null;
  name: string | null;
  record: string;
}

export interface Database {
  network_leases: LeaseTable;
  egress_log: EgressLogTable;
  objects: ObjectTable;
  api_keys: ApiKeyTable;
  sandboxes: SandboxTable;
  events: EventTable;
}
