import { MoatError } from './errors.js';
import type { HttpClient } from './http.js';
import { parseNdjson } from './ndjson.js';
import { MOAT_API_VERSION } from './types.js';

export interface ImageInfo {
  namespace: string;
  name: string;
  digest: string;
  source: 'pull' | 'import' | 'build' | 'catalog';
  public: boolean;
  sizeBytes: number;
  createdAt: string;
  updatedAt: string;
  config: {
    Entrypoint?: string[];
    Cmd?: string[];
    Env?: string[];
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: Record<string, object>;
    Labels?: Record<string, string>;
  };
  layers: number;
}

/** One line of a pull's, an import's or a build's progress. */
export type ImageProgress =
  | { type: 'resolved'; digest: string; layers: number; bytes: number }
  | { type: 'layer'; digest: string; status: 'exists' | 'downloading' | 'done'; current?: number; total?: number }
  | { type: 'stored'; digest: string }
  | { type: 'step'; step: number; total: number; instruction: string }
  | { type: 'log'; line: string };

export interface RegistryLogin {
  registry: string;
  username: string;
}

type Body = Uint8Array | ReadableStream<Uint8Array>;
const enc = encodeURIComponent;

/** A namespace's images (pull, import, build, inspect, delete) and its registry logins. */
export class ImagesApi {
  constructor(
    private readonly http: HttpClient,
    private readonly namespace: string,
  ) {}

  private get base() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${enc(this.namespace)}/images`;
  }

  /** Every image you can see, in all your namespaces (admins: all). */
  async list(): Promise<ImageInfo[]> {
    return (await this.http.json<{ items: ImageInfo[] }>('GET', `/apis/${MOAT_API_VERSION}/images`)).items;
  }

  /** This namespace's images, with the catalog's and those published to all. */
  async listNamespace(): Promise<ImageInfo[]> {
    return (await this.http.json<{ items: ImageInfo[] }>('GET', this.base)).items;
  }

  get(name: string): Promise<ImageInfo> {
    return this.http.json('GET', `${this.base}/${enc(name)}`);
  }

  async delete(name: string): Promise<void> {
    await this.http.request('DELETE', `${this.base}/${enc(name)}`);
  }

  /** Admins: make an image visible to every namespace, or private again. */
  publish(name: string, isPublic = true): Promise<ImageInfo> {
    return this.http.json('POST', `${this.base}/${enc(name)}/publish`, { json: { public: isPublic } });
  }

  pull(reference: string, o: { onProgress?: (p: ImageProgress) => void } = {}): Promise<ImageInfo> {
    return this.progress(this.http.request('POST', `${this.base}/pull`, { json: { reference }, timeoutMs: null }), o.onProgress);
  }

  /** A `docker save` or OCI-layout archive (a tar). */
  importArchive(archive: Body, o: { tag?: string; onProgress?: (p: ImageProgress) => void } = {}): Promise<ImageInfo[]> {
    const res = this.http.request('POST', `${this.base}/import`, { body: archive, contentType: 'application/x-tar', query: { tag: o.tag }, timeoutMs: null });
    return this.progress(res, o.onProgress);
  }

  /** Builds `context` (a tar of the directory, gzip or not) with its Dockerfile; steps and log lines arrive as progress. */
  build(
    context: Body,
    o: { tag: string; dockerfile?: string; target?: string; buildArgs?: Record<string, string>; onProgress?: (p: ImageProgress) => void },
  ): Promise<ImageInfo> {
    const path = `${this.base}/build?${new URLSearchParams([
      ['tag', o.tag],
      ...(o.dockerfile ? [['dockerfile', o.dockerfile]] : []),
      ...(o.target ? [['target', o.target]] : []),
      ...Object.entries(o.buildArgs ?? {}).map(([k, v]) => ['buildArg', `${k}=${v}`]),
    ]).toString()}`;
    return this.progress(this.http.request('POST', path, { body: context, contentType: 'application/x-tar', timeoutMs: null }), o.onProgress);
  }

  async registries(): Promise<RegistryLogin[]> {
    return (await this.http.json<{ items: RegistryLogin[] }>('GET', this.registriesPath)).items;
  }

  /** Checked against the registry first; the password is kept sealed and never enters a sandbox. */
  async login(registry: string, username: string, password: string): Promise<RegistryLogin> {
    return (await this.http.json<{ items: RegistryLogin[] }>('POST', this.registriesPath, { json: { registry, username, password } })).items[0]!;
  }

  /** The logins of a docker `config.json` (its `auths`). */
  async loginDockerConfig(dockerConfig: string): Promise<RegistryLogin[]> {
    return (await this.http.json<{ items: RegistryLogin[] }>('POST', this.registriesPath, { json: { dockerConfig } })).items;
  }

  async logout(registry: string): Promise<void> {
    await this.http.request('DELETE', `${this.registriesPath}/${enc(registry)}`);
  }

  private get registriesPath() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${enc(this.namespace)}/registries`;
  }

  private async progress<T>(response: Promise<Response>, onProgress?: (p: ImageProgress) => void): Promise<T> {
    const res = await response;
    for await (const raw of parseNdjson(res.body as unknown as AsyncIterable<Uint8Array>)) {
      const line = raw as { type: string; image?: T; code?: number; reason?: string; message?: string };
      if (line.type === 'image') return line.image as T;
      if (line.type === 'error') throw new MoatError(line.code ?? 500, line.reason ?? 'Error', line.message ?? 'the server reported an error');
      onProgress?.(raw as ImageProgress);
    }
    throw new MoatError(0, 'ProtocolError', 'the image stream ended without a result');
  }
}
