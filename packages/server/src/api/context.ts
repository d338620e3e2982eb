import type { AuditLog } from '../audit/log.js';
import type { BackupService } from '../backups/service.js';
import type { SandboxBackend } from '../backends/types.js';
import type { Identity } from '../identity/identity.js';
import type { ImageService } from '../images/service.js';
import type { ApiTenancy } from '../tenancy.js';
import type { Secrets } from '../secrets/secrets.js';
import type { Store } from '../store/store.js';
import type { VolumeService } from '../volumes/service.js';

export interface ServerLimits {
  maxUploadBytes: number;
  /** An image archive or a build context sent to the server. */
  maxImageUploadBytes: number;
}

/** What route modules share. */
export interface ApiContext {
  store: Store;
  identity: Identity;
  audit: AuditLog;
  secrets: Secrets;
  /** Quotas, and the environment (gateway token, exposed secrets) execs get. */
  tenancy: ApiTenancy;
  images: ImageService;
  /** Sandboxes, templates, claims and pools: on this host or on a cluster (backends/types.ts). */
  backend: SandboxBackend;
  /** Named volumes and their backups (docs/lifecycle.md). */
  volumes: VolumeService;
  backups: BackupService;
  limits: ServerLimits;
  version: string;
  /** Names this server in every response (`x-moat-replica`), so a client behind a Service sees which replica answered. */
  replica: string;
  /** Sandbox ports answer at `<port>-<sandbox uid>.<portDomain>`. */
  portDomain: string;
  /** E2B template names → Moat templates, besides the built-in aliases (docs/e2b.md). */
  e2bTemplates: Record<string, string>;
}
