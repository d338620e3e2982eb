import { applyHostLimits, builtinDrivers } from '@moat/runtime';
import type { ImageService } from '../../images/service.js';
import type { Logger } from 'pino';
import type { AuditLog } from '../../audit/log.js';
import { Activity } from './controllers/activity.js';
import { ClaimController } from './controllers/claims.js';
import { LifecycleController } from './controllers/lifecycle.js';
import { WarmPoolController } from './controllers/pools.js';
import { SandboxController, type Drivers, type SandboxNetwork, type SandboxVolumes, type Tenancy } from './controllers/sandboxes.js';
import { TemplateController } from './controllers/templates.js';
import { startDrivers } from './drivers.js';
import type { Store } from '../../store/store.js';
import type { BackendCapabilities, RuntimeInfo, SandboxBackend } from '../types.js';

export interface LocalBackendOptions {
  store: Store;
  dataDir: string;
  images: ImageService;
  network: SandboxNetwork;
  tenancy: Tenancy;
  volumes: SandboxVolumes;
  audit: AuditLog;
  log: Logger;
  /** Progress and notices for a person at a terminal. */
  say: (line: string) => void;
  /** Exec, file and port calls to a paused sandbox resume it; false answers them 409. */
  resumeOnUse: boolean;
}

/** Backstop for anything the watches and timers missed (a crash of a pool member, say); not how time-based work is done. */
const RESYNC_MS = 60_000;

/**
 * Sandboxes on this host: Moat's own controllers (sandboxes, templates, warm pools, claims, lifecycle) over
 * the runtime drivers. The controllers form one chain, sandboxes ← templates ← pools ← claims ← lifecycle,
 * each holding only the narrow port it declares, and reacting to sandboxes through their change watch.
 */
export class LocalBackend implements SandboxBackend {
  readonly kind = 'local' as const;
  readonly capabilities: BackendCapabilities = { pause: true, hibernate: true, layerBackups: true, volumes: true };
  private resyncTimer?: NodeJS.Timeout;
  private inflight?: Promise<void>;

  private constructor(
    readonly runtimes: Record<string, RuntimeInfo>,
    /** The runtime drivers that work here: backups quiesce and copy a sandbox's disks through them. */
    readonly drivers: Drivers,
    readonly sandboxes: SandboxController,
    readonly templates: TemplateController,
    readonly pools: WarmPoolController,
    readonly claims: ClaimController,
    private readonly lifecycle: LifecycleController,
    private readonly log: Logger,
  ) {}

  static async open(o: LocalBackendOptions): Promise<LocalBackend> {
    // Sized for as many sandboxes as the host has memory for (runtime host-limits.ts); only ever raised.
    const raised = await applyHostLimits().catch((err: unknown) => {
      o.log.warn({ err }, 'cannot raise the host limits for sandboxes');
      return [];
    });
    for (const c of raised) o.log.info(c, `raised ${c.sysctl} from ${c.from} to ${c.to} for sandboxes`);
    // Each driver keeps its folders under the data dir, and its per-host caches (microVM kernels, disks, snapshots) beside the image cache.
    const { drivers, runtimes } = await startDrivers(builtinDrivers({ root: o.dataDir, cacheDir: o.images.content.dir, progress: o.say }), o.say);
    const activity = new Activity();
    const sandboxes = new SandboxController(o.store, o.images, drivers, o.network, o.log, o.tenancy, activity, o.resumeOnUse, o.volumes);
    const templates = new TemplateController(o.store, (spec) => sandboxes.validateSpec(spec));
    const pools = new WarmPoolController(o.store, sandboxes, templates, o.log);
    const claims = new ClaimController(o.store, sandboxes, templates, pools, o.log);
    const lifecycle = new LifecycleController(
      o.store,
      {
        pause: (ns, name) => sandboxes.pause(ns, name),
        hibernate: (ns, name) => sandboxes.hibernate(ns, name),
        expire: (ns, name) => sandboxes.expire(ns, name),
        delete: (ns, name) => sandboxes.delete(ns, name),
        deleteClaim: (ns, name) => claims.delete(ns, name),
      },
      activity,
      o.audit,
      o.log,
      (listener) => sandboxes.onChange(listener),
    );
    return new LocalBackend(runtimes, drivers, sandboxes, templates, pools, claims, lifecycle, o.log);
  }

  /** One host, one server. */
  leads(): boolean {
    return true;
  }

  /** Recovers what a restart left (see SandboxController.recover), then starts the controllers' work. */
  async start(): Promise<void> {
    await this.sandboxes.recover();
    await this.resync();
    await this.lifecycle.resync();
    this.resyncTimer = setInterval(() => {
      this.inflight ??= this.resync()
        .catch((err: unknown) => this.log.error({ err }, 'resync failed'))
        .finally(() => (this.inflight = undefined));
    }, RESYNC_MS);
  }

  /** Level-triggered: pools refill, claims waiting for a template are served, owners' leftovers go. */
  private async resync(): Promise<void> {
    await this.pools.resync();
    await this.claims.resync();
  }

  async close(): Promise<void> {
    clearInterval(this.resyncTimer);
    await this.inflight;
    this.lifecycle.stop();
    this.pools.stop();
    this.claims.stop();
    await this.sandboxes.stop();
  }
}
