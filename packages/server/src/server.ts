import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { MoatError } from '@moat/core';
import { DEFAULT_IMAGE, DEFAULT_LAYER_LIMITS, ImageStore, ensureDir, type LayerLimits } from '@moat/runtime';
import { ImageService } from './images/service.js';
import { RegistryLogins } from './images/registry-logins.js';
import { buildApp } from './api/app.js';
import { auditEgress } from './audit/egress.js';
import { AuditLog } from './audit/log.js';
import { CheckpointSigner } from './audit/signing.js';
import type { ApiContext } from './api/context.js';
import { createApiKey } from './auth/keys.js';
import { e2bRoutes, rewriteE2bRequest, templateAliases } from './e2b/index.js';
import { LocalBackend } from './backends/local/index.js';
import { KubernetesBackend, type KubernetesBackendOptions } from './backends/kubernetes/index.js';
import type { SandboxBackend } from './backends/types.js';
import { BOOTSTRAP_ADMIN, Identity } from './identity/identity.js';
import { Quotas } from './identity/quotas.js';
import { tenancy } from './tenancy.js';
import { GatewayService } from './gateway/service.js';
import { SandboxTokens } from './gateway/tokens.js';
import { Networking, gatewayPort, pinnedHosts, type NetworkOptions } from './network.js';
import { Keyring } from './secrets/keyring.js';
import { Secrets } from './secrets/secrets.js';
import { isPostgresUrl } from './store/postgres.js';
import { Store } from './store/store.js';
import { BackupService, type BackupSandboxes } from './backups/service.js';
import { objectStoreFromEnv, type ObjectStore } from './backups/store.js';
import { VolumeService } from './volumes/service.js';

export const VERSION = '0.1.0';
export const DEFAULT_PORT = 6628;
/** Sandbox tokens live this long; every exec gets a fresh one. */
const SANDBOX_TOKEN_TTL_SECONDS = 3600;

export interface ServerOptions {
  port?: number;
  host?: string;
  /** Where the store, sandboxes and images live. */
  dataDir?: string;
  /** A PostgreSQL URL for the store, shared by replicas (default $MOAT_DATABASE_URL; unset: SQLite at `<dataDir>/moat.db`). */
  databaseUrl?: string;
  /** Image cache; defaults to `<dataDir>/images` (tests share one to build `base` once). */
  imagesDir?: string;
  /** Registries: CAs in Docker's certs.d layout (default $MOAT_REGISTRY_CERTS_DIR or /etc/moat/certs.d), plain-HTTP ones ($MOAT_INSECURE_REGISTRIES, comma-separated). */
  /** `unqualified: false` never pulls a name without a registry host (`python:3.12`) from Docker Hub. */
  registries?: { certsDir?: string; insecure?: string[]; unqualified?: boolean };
  /** Progress and notices for a person at a terminal. */
  log?: (line: string) => void;
  logger?: Logger;
  maxUploadBytes?: number;
  /** The largest image archive or build context a client may send (default 8 GiB). */
  maxImageUploadBytes?: number;
  /** The most bytes one image layer may unpack to (default $MOAT_MAX_LAYER_BYTES or 8 GiB): a zip bomb stops there. */
  maxLayerBytes?: number;
  /** Build the default image before listening (default true). */
  prepareDefaultImage?: boolean;
  /** Sandbox networks and the egress proxy. */
  network?: NetworkOptions;
  /** Sandbox ports answer at `<port>-<sandbox uid>.<portDomain>` (default $MOAT_PORT_DOMAIN or sandbox.localhost). */
  portDomain?: string;
  /** E2B template names → Moat templates (default $MOAT_E2B_TEMPLATES, `name=template,...`); see docs/e2b.md. */
  e2bTemplates?: Record<string, string>;
  /** Exec, file and port calls to a paused sandbox resume it (default true, or $MOAT_RESUME_ON_USE); false answers them 409. */
  resumeOnUse?: boolean;
  /** Where backups go (default: S3 when $MOAT_BACKUP_S3_ENDPOINT is set, else the directory $MOAT_BACKUP_DIR or `<dataDir>/backups`). */
  backupStore?: ObjectStore;
  /** Run sandboxes on a Kubernetes cluster through agent-sandbox instead of on this host (docs/kubernetes.md). */
  kubernetes?: KubernetesBackendOptions;
  /** This server's name in the `x-moat-replica` response header (default the host's name: in a pod, the pod's). */
  replica?: string;
}

export interface RunningServer {
  url: string;
  adminKey: string;
  dataDir: string;
  close(): Promise<void>;
}

/** Backups of sandboxes' writable layers need this host's sandboxes; on a cluster the routes answer 501 first. */
const noBackups = (): never => {
  throw new MoatError(501, 'NotImplemented', 'the kubernetes backend cannot back up sandboxes');
};
const noLocalSandboxes: BackupSandboxes = { get: noBackups, exclusive: noBackups, driverFor: noBackups, create: noBackups };

export function defaultDataDir(): string {
  if (process.env.MOAT_DATA_DIR) return process.env.MOAT_DATA_DIR;
  return process.getuid?.() === 0 ? '/var/lib/moat' : join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'moat');
}

/** The admin key is created on first start and kept (0600) in the data dir so later starts can print it again. */
async function adminKey(store: Store, identity: Identity, dataDir: string): Promise<string> {
  await identity.ensureBootstrapAdmin();
  const file = join(dataDir, 'admin-key');
  const saved = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (saved) return saved;
  const { key } = await createApiKey(store, { name: 'admin (first start)', user: BOOTSTRAP_ADMIN });
  await writeFile(file, key + '\n', { mode: 0o600 });
  await chmod(file, 0o600);
  return key;
}

/** The shared PostgreSQL a URL names, or the embedded SQLite file; a failure names the setting that chose the database. */
async function openStore(opts: ServerOptions, dataDir: string): Promise<Store> {
  const url = opts.databaseUrl ?? process.env.MOAT_DATABASE_URL;
  if (!url) return Store.open(join(dataDir, 'moat.db'));
  const setting = opts.databaseUrl === undefined ? 'MOAT_DATABASE_URL' : 'the databaseUrl option';
  if (!isPostgresUrl(url)) throw new Error(`${setting} must be a postgres:// or postgresql:// URL (unset it to use SQLite in the data dir)`);
  try {
    return await Store.open(url);
  } catch (err) {
    throw new Error(`${(err as Error).message} (the database ${setting} selects)`);
  }
}

/** Build (or find) an image in a data dir's store without starting a server: setup and CI use it. */
export async function prepareCatalogImage(name: string, opts: { dataDir?: string | undefined; log?: (line: string) => void } = {}) {
  const images = new ImageStore(process.env.MOAT_IMAGES_DIR ?? join(opts.dataDir ?? defaultDataDir(), 'images'));
  return images.ensureCatalog(name, opts.log);
}

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const say = opts.log ?? (() => {});
  const dataDir = opts.dataDir ?? defaultDataDir();
  // 0711: sandbox roots (uids of their user namespaces) must traverse to their bundles, but not list anything. On a
  // cluster no sandbox is here, and the data dir may be a volume this user cannot chmod (a pod's emptyDir).
  if (opts.kubernetes) await mkdir(dataDir, { recursive: true, mode: 0o700 });
  else await ensureDir(dataDir, 0o711);
  const logger =
    opts.logger ?? pino({ level: process.env.MOAT_LOG_LEVEL ?? 'info' }, pino.destination({ dest: join(dataDir, 'server.log'), sync: false, mkdir: true }));

  const store = await openStore(opts, dataDir);
  const identity = new Identity(store);
  const audit = await AuditLog.open(store, await CheckpointSigner.open(join(dataDir, 'audit-signing.pem')), logger);
  const keyring = await Keyring.load(dataDir);
  const secrets = new Secrets(store, keyring, audit);
  // Finishes a rotation a crash interrupted, or a restart with a new MOAT_MASTER_KEY.
  await secrets.reseal();
  await keyring.retire();
  const quotas = new Quotas(store, identity);
  const images = new ImageService(
    store,
    new ImageStore(opts.imagesDir ?? process.env.MOAT_IMAGES_DIR ?? join(dataDir, 'images'), { limits: layerLimits(opts) }),
    new RegistryLogins(secrets),
    quotas,
    logger,
    registryOptions(opts),
  );
  // Named volumes and backups (docs/lifecycle.md) exist before recovery, which restarts sandboxes with their volumes.
  const volumes = await VolumeService.open(store, quotas, join(dataDir, 'volumes'));
  const host = opts.kubernetes ? undefined : await startHost(opts, { store, dataDir, images, identity, audit, secrets, quotas, volumes, logger, say });
  const tenants = host?.tenants ?? tenancy(identity, quotas, secrets);
  let backend: SandboxBackend;
  if (host) backend = host.backend;
  else {
    const cluster = await KubernetesBackend.open({ log: logger, ...opts.kubernetes });
    say(`sandboxes run on the Kubernetes cluster at ${cluster.server}`);
    backend = cluster;
  }
  const backups = await BackupService.open(
    store,
    volumes,
    host?.backend.sandboxes ?? noLocalSandboxes,
    host?.backend.drivers ?? { get: () => undefined },
    opts.backupStore ?? objectStoreFromEnv(dataDir),
    logger,
  );
  await host?.backend.start();
  // Upkeep, level-triggered: the host's firewall and sandbox token files (one host only), the audit log's checkpoints.
  const upkeep = async () => {
    await host?.upkeep();
    await audit.flushIfStale();
  };
  await upkeep();
  let inflight: Promise<void> | undefined;
  const upkeepTimer = setInterval(() => {
    inflight ??= upkeep()
      .catch((err: unknown) => logger.error({ err }, 'upkeep failed'))
      .finally(() => (inflight = undefined));
  }, 2000);

  // Image GC (images/service.ts `collect`): unused images and layers, and pulled ones under disk pressure.
  const gcTimer = opts.kubernetes
    ? undefined
    : setInterval(() => void images.collect().catch((err: unknown) => logger.error({ err }, 'image GC failed')), IMAGE_GC_INTERVAL_MS);
  gcTimer?.unref();

  const ctx: ApiContext = {
    store,
    identity,
    audit,
    secrets,
    tenancy: tenants,
    images,
    backend,
    volumes,
    backups,
    limits: { maxUploadBytes: opts.maxUploadBytes ?? 100 * 1024 * 1024, maxImageUploadBytes: opts.maxImageUploadBytes ?? 8 * 1024 ** 3 },
    version: VERSION,
    replica: opts.replica ?? hostname(),
    portDomain: opts.portDomain ?? process.env.MOAT_PORT_DOMAIN ?? 'sandbox.localhost',
    e2bTemplates: opts.e2bTemplates ?? templateAliases(),
  };
  const app = await buildApp(ctx, logger, [{ rewriteUrl: rewriteE2bRequest, routes: e2bRoutes }]);
  const listenOn = opts.host ?? '127.0.0.1';
  await app.listen({ port: opts.port ?? DEFAULT_PORT, host: listenOn });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const key = await adminKey(store, identity, dataDir);
  return {
    url: `http://${listenOn.includes(':') ? `[${listenOn}]` : listenOn}:${port}`,
    adminKey: key,
    dataDir,
    async close() {
      clearInterval(upkeepTimer);
      clearInterval(gcTimer);
      await app.close();
      await inflight;
      await backend.close();
      await host?.close();
      await audit.flush();
      await store.close();
    },
  };
}

interface HostParts {
  store: Store;
  dataDir: string;
  images: ImageService;
  identity: Identity;
  audit: AuditLog;
  secrets: Secrets;
  quotas: Quotas;
  volumes: VolumeService;
  logger: Logger;
  say: (line: string) => void;
}

/** Sandboxes on this host: its networks and egress proxy, the API gateway they reach, and the local backend. */
async function startHost(opts: ServerOptions, p: HostParts) {
  if (opts.prepareDefaultImage ?? true) await p.images.content.ensureCatalog(DEFAULT_IMAGE, p.say);
  const network = await Networking.start(opts.network ?? {}, p.store, p.logger, (r) => auditEgress(p.audit, p.identity, r));
  const gateway = await GatewayService.start({
    store: p.store,
    network,
    tokens: await SandboxTokens.open(join(p.dataDir, 'sandbox-token.key'), SANDBOX_TOKEN_TTL_SECONDS),
    secrets: p.secrets,
    identity: p.identity,
    audit: p.audit,
    log: p.logger,
    port: gatewayPort(opts.network ?? {}),
    pinnedHosts: pinnedHosts(opts.network ?? {}),
    ...(opts.network?.lookup ? { lookup: opts.network.lookup } : {}),
  });
  const tenants = tenancy(p.identity, p.quotas, p.secrets, gateway);
  const backend = await LocalBackend.open({
    store: p.store,
    dataDir: p.dataDir,
    images: p.images,
    network,
    tenancy: tenants,
    volumes: p.volumes,
    audit: p.audit,
    log: p.logger,
    say: p.say,
    resumeOnUse: opts.resumeOnUse ?? process.env.MOAT_RESUME_ON_USE !== 'false',
  });
  return {
    backend,
    tenants,
    async upkeep() {
      await network.ensureFirewall(p.logger);
      await gateway.refreshTokenFiles(backend.sandboxes);
    },
    async close() {
      await gateway.close();
      await network.close();
    },
  };
}

const IMAGE_GC_INTERVAL_MS = Number(process.env.MOAT_IMAGE_GC_INTERVAL_SECONDS ?? 3600) * 1000;

function registryOptions(opts: ServerOptions) {
  const insecure = opts.registries?.insecure ?? (process.env.MOAT_INSECURE_REGISTRIES ?? '').split(',').filter(Boolean);
  return {
    certsDir: opts.registries?.certsDir ?? process.env.MOAT_REGISTRY_CERTS_DIR ?? '/etc/moat/certs.d',
    insecureRegistries: insecure,
    unqualifiedPulls: opts.registries?.unqualified ?? process.env.MOAT_PULL_UNQUALIFIED !== '0',
  };
}

function layerLimits(opts: ServerOptions): LayerLimits {
  const env = process.env.MOAT_MAX_LAYER_BYTES;
  const maxBytes = opts.maxLayerBytes ?? (env ? Number(env) : DEFAULT_LAYER_LIMITS.maxBytes);
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0)
    throw new Error(`the layer limit (MOAT_MAX_LAYER_BYTES) must be a positive number of bytes, not ${JSON.stringify(env ?? maxBytes)}`);
  return { ...DEFAULT_LAYER_LIMITS, maxBytes };
}
