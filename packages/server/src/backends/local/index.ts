import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { GvisorDriver, MicrovmDriver, OciDriver, defaultHostnameHelper, defaultInitBinary, type ImageStore, type RuntimeDriver } from '@moat/runtime';
import type { Logger } from 'pino';
import type { AuditLog } from '../../audit/log.js';
import { Activity } from './controllers/activity.js';
import { ClaimController } from './controllers/claims.js';
import { LifecycleController } from './controllers/lifecycle.js';
import { WarmPoolController } from './controllers/pools.js';
import { SandboxController, type Drivers, type SandboxNetwork, type SandboxVolumes, type Tenancy } from './controllers/sandboxes.js';
import { TemplateController } from './controllers/templates.js';
import type { Store } from '../../store/store.js';
import type { BackendCapabilities, RuntimeInfo, SandboxBackend } from '../types.js';

export interface LocalBackendOptions {
  store: Store;
  dataDir: string;
  images: ImageStore;
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
  readonly capabilities: BackendCapabilities = { pause: true, hibernate: true, layerBackups: true };
  private resyncTimer?: NodeJS.Timeout;
  private inflight?: Promise<void>;

  private constructor(
    readonly runtimes: Record<string, RuntimeInfo>,
    readonly sandboxes: SandboxController,
    readonly templates: TemplateController,
    readonly pools: WarmPoolController,
    readonly claims: ClaimController,
    private readonly lifecycle: LifecycleController,
    private readonly log: Logger,
  ) {}

  static async open(o: LocalBackendOptions): Promise<LocalBackend> {
    const { runtimes, drivers } = await openDrivers(o);
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
    return new LocalBackend(runtimes, sandboxes, templates, pools, claims, lifecycle, o.log);
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
    this.log.debug('local backend stopped');
  }
}

/** Every runtime driver this host has, checked; the microVM's first preparation runs in the background. */
async function openDrivers(o: LocalBackendOptions): Promise<{ runtimes: Record<string, RuntimeInfo>; drivers: Drivers }> {
  const { dataDir, images, say } = o;
  // 0711: sandbox roots (uids of their user namespaces) must traverse to their bundles, but not list anything.
  for (const d of ['sandboxes', 'sandboxes-gvisor', 'runtime/runc', 'runtime/gvisor']) {
    await mkdir(join(dataDir, d), { recursive: true, mode: 0o711 });
    await chmod(join(dataDir, d), 0o711);
  }
  const runc = new OciDriver({ sandboxesDir: join(dataDir, 'sandboxes'), stateDir: join(dataDir, 'runtime', 'runc'), initBinary: defaultInitBinary(), hostnameHelper: defaultHostnameHelper() });
  // gVisor keeps its own sandboxes and state dirs: each driver's listIds (orphan cleanup) must see only its own.
  const gvisor = new GvisorDriver({ sandboxesDir: join(dataDir, 'sandboxes-gvisor'), stateDir: join(dataDir, 'runtime', 'gvisor'), initBinary: defaultInitBinary(), hostnameHelper: defaultHostnameHelper() });
  // MicroVM kernels, image disks and snapshots are per host, not per server: kept beside the image cache.
  const microvm = new MicrovmDriver({ sandboxesDir: join(dataDir, 'sandboxes-microvm'), cacheDir: join(images.dir, 'microvm'), initBinary: defaultInitBinary(), progress: (l) => say(`microvm: ${l}`) });
  const available = new Map<string, RuntimeDriver>();
  const runtimes: Record<string, RuntimeInfo> = {};
  for (const driver of [runc, gvisor, microvm] as RuntimeDriver[]) {
    try {
      await driver.check();
      available.set(driver.name, driver);
      runtimes[driver.name] = { available: true };
    } catch (err) {
      runtimes[driver.name] = { available: false, reason: (err as Error).message };
      say(`warning: runtime ${driver.name} unavailable: ${(err as Error).message}`);
    }
  }
  // The first start downloads the guest kernel and probes KVM: in the background, so the API is up meanwhile.
  if (available.has('microvm')) {
    microvm.prepare().then(
      async () => {
        const warning = await microvm.degraded();
        if (warning) runtimes.microvm = { available: true, warning };
      },
      (err: Error) => say(`warning: microvm: ${err.message}`),
    );
  }
  return {
    runtimes,
    drivers: {
      get: (name) => available.get(name),
      unavailable: (name) => (available.has(name) ? undefined : (runtimes[name]?.reason ?? 'unknown runtime')),
    },
  };
}
