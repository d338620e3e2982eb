import { MoatError } from './errors.js';
import { HttpClient } from './http.js';
import { ResourceClient } from './resources.js';
import { Sandbox } from './sandbox.js';
import { sandboxManifest, type CreateSandboxOptions } from './spec.js';
import { MOAT_API_VERSION, SANDBOX_API_VERSION, type Health, type Image, type KubeObject, type SandboxResource } from './types.js';

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
  private readonly http: HttpClient;

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
    this.sandboxes = new SandboxesApi(this.http, this.resources<SandboxResource>(SANDBOX_API_VERSION, 'sandboxes'));
    this.images = new ImagesApi(this.http);
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
  ) {}

  /** Create a sandbox and, unless `wait: false`, wait until it is Ready. */
  async create(opts: CreateSandboxOptions = {}): Promise<Sandbox> {
    const sbx = new Sandbox(this.http, this.client, await this.client.create(sandboxManifest(opts)));
    if (opts.wait ?? true) await sbx.waitReady({ timeoutSeconds: opts.timeoutSeconds });
    return sbx;
  }

  async get(name: string): Promise<Sandbox> {
    return new Sandbox(this.http, this.client, await this.client.get(name));
  }

  async list(opts: { labelSelector?: string } = {}): Promise<Sandbox[]> {
    return (await this.client.list(opts)).map((r) => new Sandbox(this.http, this.client, r));
  }

  /** Waits until the sandbox is gone unless `wait: false`. */
  async delete(name: string, opts: { wait?: boolean } = {}): Promise<void> {
    await this.client.delete(name, opts);
  }
}

export class ImagesApi {
  constructor(private readonly http: HttpClient) {}

  async list(): Promise<Image[]> {
    return (await this.http.json<{ items: Image[] }>('GET', `/apis/${MOAT_API_VERSION}/images`))?.items ?? [];
  }
}
