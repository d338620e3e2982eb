import { MoatError } from './errors.js';
import { AuditApi } from './audit.js';
import { GatewayApi } from './gateway.js';
import { HttpClient } from './http.js';
import { AgentsApi, KeysApi, UsersApi, type Whoami } from './identity.js';
import { ResourceClient } from './resources.js';
import { Sandbox } from './sandbox.js';
import { SecretsApi } from './secrets.js';
import { ImagesApi } from './images.js';
import { BackupsApi, VolumesApi } from './volumes.js';
import { claimManifest, sandboxManifest, type CreateSandboxOptions } from './spec.js';
import {
  CONDITION,
  EXTENSIONS_API_VERSION,
  MOAT_API_VERSION,
  SANDBOX_API_VERSION,
  type Condition,
  type Health,
  type KubeObject,
  type SandboxResource,
} from './types.js';

export interface MoatOptions {
  /** Default: $MOAT_URL, else the server's default address. */
  url?: string;
  /** Default: $MOAT_API_KEY. */
  apiKey?: string;
  /** Default `default`. */
  namespace?: string;
  /** Limit for ordinary API calls (default 60 s). Exec, waits and file transfers have their own. */
  timeoutMs?: number;
  /** For tests and unusual runtimes. */
  fetch?: typeof fetch;
}

export const DEFAULT_URL = 'http://127.0.0.1:6628';

export class Moat {
  readonly url: string;
  readonly namespace: string;
  readonly sandboxes: SandboxesApi;
  readonly images: ImagesApi;
  /** SandboxTemplates, SandboxClaims and SandboxWarmPools as plain objects. */
  readonly templates: ResourceClient;
  readonly claims: ResourceClient;
  readonly warmPools: ResourceClient;
  readonly users: UsersApi;
  readonly agents: AgentsApi;
  readonly keys: KeysApi;
  readonly audit: AuditApi;
  /** Secrets of this client's namespace. */
  readonly secrets: SecretsApi;
  /** Named volumes of this client's namespace, and their backups. */
  readonly volumes: VolumesApi;
  readonly backups: BackupsApi;
  /** API gateway settings and usage of this client's namespace. */
  readonly gateway: GatewayApi;
  private readonly http: HttpClient;
  private me?: Promise<Whoami>;

  constructor(opts: MoatOptions = {}) {
    const url = (opts.url ?? process.env.MOAT_URL ?? DEFAULT_URL).replace(/\/+$/, '');
    try {
      new URL(url);
    } catch {
      throw new MoatError(0, 'BadRequest', `invalid Moat server URL "${url}" (expected e.g. ${DEFAULT_URL})`);
    }
    this.url = url;
    this.namespace = opts.namespace ?? 'default';
    this.http = new HttpClient(url, opts.apiKey ?? process.env.MOAT_API_KEY, opts.fetch ?? globalThis.fetch, opts.timeoutMs ?? 60_000);
    this.templates = this.resources(EXTENSIONS_API_VERSION, 'sandboxtemplates');
    this.claims = this.resources(EXTENSIONS_API_VERSION, 'sandboxclaims');
    this.warmPools = this.resources(EXTENSIONS_API_VERSION, 'sandboxwarmpools');
    this.sandboxes = new SandboxesApi(this.http, this.resources<SandboxResource>(SANDBOX_API_VERSION, 'sandboxes'), this.claims);
    this.images = new ImagesApi(this.http, this.namespace);
    this.users = new UsersApi(this.http);
    // Asked once; a failure is not remembered, so the next call tries again.
    const me = () =>
      (this.me ??= this.whoami().catch((err: unknown) => {
        this.me = undefined;
        throw err;
      }));
    this.agents = new AgentsApi(this.http, me);
    this.keys = new KeysApi(this.http, me);
    this.audit = new AuditApi(this.http);
    this.secrets = new SecretsApi(this.http, this.namespace);
    this.volumes = new VolumesApi(this.http, this.namespace);
    this.backups = new BackupsApi(this.http, this.namespace);
    this.gateway = new GatewayApi(this.http, this.namespace);
  }

  /** The user, role, agent and namespaces of this client's key. */
  whoami(): Promise<Whoami> {
    return this.http.json<Whoami>('GET', `/apis/${MOAT_API_VERSION}/whoami`);
  }

  /** A generic client for any namespaced collection `/apis/{apiVersion}/namespaces/{ns}/{plural}`. */
  resources<T extends KubeObject = KubeObject>(apiVersion: string, plural: string, opts: { namespace?: string } = {}): ResourceClient<T> {
    return new ResourceClient<T>(this.http, apiVersion, plural, opts.namespace ?? this.namespace);
  }

  /** No auth needed. */
  health(): Promise<Health> {
    return this.http.json<Health>('GET', '/healthz');
  }

  /** Server version, available runtimes, data dir, limits. */
  info(): Promise<Record<string, unknown>> {
    return this.http.json('GET', `/apis/${MOAT_API_VERSION}/info`);
  }
}

export class SandboxesApi {
  constructor(
    private readonly http: HttpClient,
    /** The raw CRUD client, for callers that want plain objects. */
    readonly client: ResourceClient<SandboxResource>,
    private readonly claims: ResourceClient,
  ) {}

  /**
   * Create a sandbox and, unless `wait: false`, wait until it is Ready. With
   * `template`, it is claimed (from a warm pool when one exists).
   */
  async create(opts: CreateSandboxOptions = {}): Promise<Sandbox> {
    if (opts.template !== undefined) return this.claim({ ...opts, template: opts.template });
    const sbx = new Sandbox(this.http, this.client, await this.client.create(sandboxManifest(opts)), this.claims);
    if (opts.wait ?? true) await sbx.waitReady({ timeoutSeconds: opts.timeoutSeconds });
    return sbx;
  }

  private async claim(opts: CreateSandboxOptions & { template: string }): Promise<Sandbox> {
    type Claim = KubeObject & { status?: { sandbox?: { name?: string }; conditions?: Condition[] } };
    let claim = (await this.claims.create(claimManifest(opts))) as Claim;
    const name = claim.status?.sandbox?.name;
    if (!name) {
      const c = claim.status?.conditions?.find((x) => x.type === CONDITION.Ready);
      await this.claims.delete(claim.metadata.name!, { wait: false }).catch(() => {});
      throw new MoatError(422, c?.reason ?? 'ClaimFailed', `template "${opts.template}": ${c?.message ?? 'the claim was not served'}`);
    }
    const ready = claim.status?.conditions?.some((c) => c.type === CONDITION.Ready && c.status === 'True');
    if (!ready && (opts.wait ?? true)) claim = (await this.claims.wait(claim.metadata.name!, { timeoutSeconds: opts.timeoutSeconds })) as Claim;
    return new Sandbox(this.http, this.client, await this.client.get(name), this.claims);
  }

  async get(name: string): Promise<Sandbox> {
    return new Sandbox(this.http, this.client, await this.client.get(name), this.claims);
  }

  async list(opts: { labelSelector?: string } = {}): Promise<Sandbox[]> {
    return (await this.client.list(opts)).map((r) => new Sandbox(this.http, this.client, r, this.claims));
  }

  /** Waits until the sandbox is gone unless `wait: false`. A claimed sandbox goes with its claim. */
  async delete(name: string, opts: { wait?: boolean } = {}): Promise<void> {
    await (await this.get(name)).delete(opts);
  }
}
