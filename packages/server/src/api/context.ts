import type { ImageStore } from '@moat/runtime';
import type { ClaimController } from '../controllers/claims.js';
import type { WarmPoolController } from '../controllers/pools.js';
import type { SandboxController } from '../controllers/sandboxes.js';
import type { TemplateController } from '../controllers/templates.js';
import type { Store } from '../store/store.js';

export interface ServerLimits {
  maxUploadBytes: number;
}

/** What route modules share. */
export interface ApiContext {
  store: Store;
  images: ImageStore;
  sandboxes: SandboxController;
  templates: TemplateController;
  claims: ClaimController;
  pools: WarmPoolController;
  limits: ServerLimits;
  version: string;
  runtimes: Record<string, { available: boolean; reason?: string }>;
  /** Sandbox ports answer at `<port>-<sandbox uid>.<portDomain>`. */
  portDomain: string;
}
