import type { Generated } from 'kysely';

export interface ApiKeyTable {
  id: string;
  name: string;
  hash: string;
  user: string;
  /** Null: the key acts for the user in all their namespaces; else only in this agent's. */
  agent: string | null;
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
  /** Desired state: 'Running', 'Paused', 'Hibernated' or 'Deleted'; the sandbox controller converges the host to it, across crashes. */
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

/** Each sandbox's host id range (runtime userns.ts: slot n is ids 2^24 + n * 65536 ..), held until it is deleted. */
export interface IdRangeTable {
  slot: number;
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

/** Quotas are JSON documents (see identity/quotas.ts); `{}` means no limit. */
export interface UserTable {
  name: string;
  role: string;
  quota: string;
  created_at: string;
}

/** An agent of a user; its namespace holds everything the (user, agent) pair owns. */
export interface AgentTable {
  user: string;
  name: string;
  namespace: string;
  quota: string;
  created_at: string;
}

/** The audit chain: each event's hash covers its fields and its predecessor's hash (audit/log.ts). */
export interface AuditEventTable {
  seq: number;
  time: string;
  actor_user: string | null;
  actor_agent: string | null;
  key_id: string | null;
  source: string;
  action: string;
  namespace: string | null;
  sandbox: string | null;
  object: string | null;
  result: string;
  /** JSON text, hashed as stored. */
  detail: string;
  prev_hash: string;
  hash: string;
}

/** A signature over (seq, hash) every so often: a rewritten chain cannot match it. */
export interface AuditCheckpointTable {
  seq: number;
  hash: string;
  signature: string;
  time: string;
}

/** A namespace's name for an image in the host's content store (images/service.ts); catalog images have none. */
export interface ImageTable {
  namespace: string;
  /** `my-agent:latest`, `registry:5000/app:v1`: see images/names.ts. */
  name: string;
  digest: string;
  source: 'pull' | 'import' | 'build' | 'catalog';
  /** 1: every namespace sees it (an admin published it). */
  public: number;
  size_bytes: number;
  created_at: string;
  updated_at: string;
}

/** Sealed with AES-256-GCM under a master key (secrets/keyring.ts); the value never leaves but to where it is used. */
export interface SecretTable {
  namespace: string;
  name: string;
  key_id: string;
  nonce: string;
  ciphertext: string;
  created_at: string;
  updated_at: string;
}

/** A namespace's gateway settings (gateway/config.ts), one JSON document. */
export interface GatewayConfigTable {
  namespace: string;
  config: string;
  updated_at: string;
}

/** LLM calls per UTC day, sandbox and model: what budgets count and usage reports show. */
export interface GatewayUsageTable {
  day: string;
  namespace: string;
  sandbox: string;
  model: string;
  user: string;
  agent: string;
  requests: number;
  input_tokens: number;
  output_tokens: number;
}

export interface PortalSessionTable {
  /** SHA-256 of the cookie's session id. */
  id_hash: string;
  key_id: string;
  csrf: string;
  created_at: string;
  expires_at: string;
}

/** A named volume: an ext4 image at `<dataDir>/volumes/<uid>.img` (volumes/service.ts). */
export interface VolumeTable {
  uid: string;
  namespace: string;
  name: string;
  size_bytes: number;
  created_at: string;
  /** The sandbox it is attached to; one at a time. */
  sandbox_uid: string | null;
  /** 1: outlives its sandbox; 0: deleted with it (a volumeClaimTemplate's under the Delete policy). */
  retain: number;
}

/** A volume's snapshot in the backup object store (backups/service.ts). */
export interface BackupTable {
  id: string;
  namespace: string;
  volume: string;
  volume_uid: string;
  /** Size of the volume (the image restored). */
  size_bytes: number;
  compressed_bytes: number;
  /** SHA-256 of the stored (zstd) object. */
  sha256: string;
  store: string;
  key: string;
  created_at: string;
  /** 0 while the object is written or deleted (see migration 0009). */
  complete: number;
  /** 'volume', or 'rootfs': a sandbox's writable layer (migration 0010); `volume` and `volume_uid` are '' then. */
  kind: 'volume' | 'rootfs';
  /** rootfs: the sandbox backed up, its uid, its spec (JSON) and the digest of its image. */
  sandbox: string | null;
  sandbox_uid: string | null;
  spec: string | null;
  image_digest: string | null;
}

export interface Database {
  volumes: VolumeTable;
  backups: BackupTable;
  portal_sessions: PortalSessionTable;
  gateway_configs: GatewayConfigTable;
  gateway_usage: GatewayUsageTable;
  secrets: SecretTable;
  images: ImageTable;
  audit_events: AuditEventTable;
  audit_checkpoints: AuditCheckpointTable;
  users: UserTable;
  agents: AgentTable;
  network_leases: LeaseTable;
  id_ranges: IdRangeTable;
  egress_log: EgressLogTable;
  objects: ObjectTable;
  api_keys: ApiKeyTable;
  sandboxes: SandboxTable;
  events: EventTable;
}
