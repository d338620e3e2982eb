import type { ImageStore } from '@moat/runtime';
import type { SandboxController } from '../controllers/sandboxes.js';
import type { Store } from '../store/store.js';

export interface ServerLimits {
  maxUploadBytes: number;
}

/** What route modules share. */
export interface ApiContext {
  store: Store;
  images: ImageStore;
  sandboxes: SandboxController;
  limits: ServerLimits;
  version: string;
  runtimes: Record<string, { available: boolean; reason?: string }>;
}
