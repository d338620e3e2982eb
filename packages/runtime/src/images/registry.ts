import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { MoatError } from '@moat/core';
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, parseConfig, parseManifest, pickPlatform, readLimited, verified } from './parse.js';
import { DOCKER_HUB, formatReference, type ImageReference } from './reference.js';
import { MEDIA, type Descriptor, type ImageSource, type ResolvedImage } from './oci.js';

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface RegistryClientOptions {
  /** The login for a registry host, read only when the registry asks for one. */
  credentials?: (registry: string) => Promise<RegistryCredentials | undefined>;
  /** Docker's certs.d: `<certsDir>/<host[:port]>/*.crt` are CAs trusted for that registry, besides the system's. */
  certsDir?: string;
  /** Hosts reached over plain HTTP when HTTPS fails; loopback hosts always may be, as in Docker. */
  insecure?: string[];
}

const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');
const TIMEOUT_MS = 30_000;

interface Response {
  status: number;
  headers: IncomingMessage['headers'];
  body: IncomingMessage;
}

/**
 * A client of the OCI distribution API: HTTPS (HTTP for loopback and listed
 * hosts), Basic and Bearer-token authentication, redirects to blob storage.
 * Whatever a registry sends is checked by the caller against a digest.
 */
export class RegistryClient {
  private readonly auth = new Map<string, string>();
  private readonly schemes = new Map<string, 'https' | 'http'>();

  constructor(private readonly o: RegistryClientOptions = {}) {}

  /** The image `ref` names, as a source the store pulls from. */
  source(ref: ImageReference): ImageSource {
    const name = formatReference(ref);
    const repo = ref.repository;
    return {
      name,
      resolve: () => this.resolve(ref, name),
      blob: async (desc: Descriptor, signal?: AbortSignal) => {
        const res = await this.get(ref.registry, `/v2/${repo}/blobs/${desc.digest}`, repo, { signal });
        if (res.status !== 200) throw await this.failure(res, ref.registry, `blob ${desc.digest} of ${name}`);
        return res.body;
      },
    };
  }

  /** Checks a login against the registry (its `/v2/` endpoint), as `docker login` does. */
  async login(registry: string, creds: RegistryCredentials): Promise<void> {
    const res = await this.get(registry, '/v2/', undefined, { creds });
    res.body.resume();
    if (res.status === 200) return;
    if (res.status === 401 || res.status === 403)
      throw new MoatError(403, 'RegistryUnauthorized', `registry ${registry} refused the login of ${JSON.stringify(creds.username)}`);
    throw await this.failure(res, registry, 'the login check');
  }

  private async resolve(ref: ImageReference, name: string): Promise<ResolvedImage> {
    const top = await this.manifest(ref, ref.digest ?? ref.tag!, name);
    let digest = top.digest;
    let parsed = top.parsed;
    if (parsed.kind === 'index') {
      const pick = pickPlatform(parsed.manifests, name);
      const platform = await this.manifest(ref, pick.digest, name);
      digest = pick.digest;
      parsed = platform.parsed;
      if (parsed.kind !== 'manifest') throw new MoatError(502, 'BadManifest', `${name}: an index inside an index is not supported`);
    }
    const manifest = parsed.manifest;
    const res = await this.get(ref.registry, `/v2/${ref.repository}/blobs/${manifest.config.digest}`, ref.repository);
    if (res.status !== 200) throw await this.failure(res, ref.registry, `the config of ${name}`);
    const configBytes = verified(await readLimited(res.body, MAX_CONFIG_BYTES, `${name} config`), manifest.config.digest, `${name} config`);
    return { digest, manifest, configBytes, config: parseConfig(configBytes, `${name} config`) };
  }

  private async manifest(ref: ImageReference, tagOrDigest: string, name: string) {
    const res = await this.get(ref.registry, `/v2/${ref.repository}/manifests/${tagOrDigest}`, ref.repository, { accept: ACCEPT });
    if (res.status === 404) {
      res.body.resume();
      throw new MoatError(404, 'ImageNotFound', `${name}: not found in registry ${ref.registry} (no manifest for ${tagOrDigest})`);
    }
    if (res.status !== 200) throw await this.failure(res, ref.registry, `the manifest of ${name}`);
    const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES, `${name} manifest`);
    // A digest names exact bytes; a tag's digest is that of what the registry sent.
    const digest = tagOrDigest.startsWith('sha256:') ? tagOrDigest : `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    verified(bytes, digest, `${name} manifest`);
    return { digest, parsed: parseManifest(bytes, name, res.headers['content-type']) };
  }

  /** A GET with the registry's authentication: a 401 challenge is answered once, and its answer kept per scope. */
  private async get(
    registry: string,
    path: string,
    repo: string | undefined,
    o: { accept?: string; signal?: AbortSignal; creds?: RegistryCredentials } = {},
  ): Promise<Response> {
    const key = `${registry} ${repo ?? ''}`;
    const headers: Record<string, string> = { 'user-agent': 'moat', ...(o.accept ? { accept: o.accept } : {}) };
    const cached = this.auth.get(key);
    let res = await this.send(registry, path, cached ? { ...headers, authorization: cached } : headers, o.signal);
    if (res.status !== 401) return res;
    res.body.resume();
    const creds = o.creds ?? (await this.o.credentials?.(registry));
    const authorization = await this.answer(registry, res.headers['www-authenticate'], repo, creds, o.signal);
    this.auth.set(key, authorization);
    res = await this.send(registry, path, { ...headers, authorization }, o.signal);
    if (res.status === 401) {
      res.body.resume();
      throw new MoatError(
        403,
        'RegistryUnauthorized',
        creds
          ? `registry ${registry} refused the login of ${JSON.stringify(creds.username)} for ${repo ?? 'its API'}`
          : `registry ${registry} requires a login: moat registry login ${registry}`,
      );
    }
    return res;
  }

  private async answer(
    registry: string,
    challenge: string | undefined,
    repo: string | undefined,
    creds: RegistryCredentials | undefined,
    signal?: AbortSignal,
  ) {
    const basic = creds ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}` : undefined;
    const c = parseChallenge(challenge ?? '');
    if (c.scheme === 'basic') {
      if (!basic) throw new MoatError(403, 'RegistryUnauthorized', `registry ${registry} requires a login: moat registry login ${registry}`);
      return basic;
    }
    if (c.scheme !== 'bearer' || !c.params.realm)
      throw new MoatError(502, 'RegistryError', `registry ${registry} asked for an unsupported authentication: ${challenge}`);
    const url = new URL(c.params.realm);
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && this.mayBeHttp(url.host)))
      throw new MoatError(502, 'RegistryError', `registry ${registry} sends its token requests to ${url.origin}, which is not HTTPS`);
    if (c.params.service) url.searchParams.set('service', c.params.service);
    const scope = c.params.scope ?? (repo ? `repository:${repo}:pull` : undefined);
    if (scope) url.searchParams.set('scope', scope);
    const res = await this.sendUrl(url, { 'user-agent': 'moat', ...(basic ? { authorization: basic } : {}) }, signal);
    if (res.status === 401 || res.status === 403) {
      res.body.resume();
      throw new MoatError(
        403,
        'RegistryUnauthorized',
        creds
          ? `registry ${registry} refused the login of ${JSON.stringify(creds.username)}`
          : `registry ${registry} requires a login: moat registry login ${registry}`,
      );
    }
    if (res.status !== 200) throw await this.failure(res, registry, 'the token request');
    const body = JSON.parse((await readLimited(res.body, 1 << 20, `${registry} token`)).toString()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new MoatError(502, 'RegistryError', `registry ${registry}'s token service answered no token`);
    return `Bearer ${token}`;
  }

  private async send(registry: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    const host = registry === DOCKER_HUB ? 'registry-1.docker.io' : registry;
    const known = this.schemes.get(host);
    if (known) return this.sendUrl(new URL(`${known}://${host}${path}`), headers, signal);
    try {
      const res = await this.sendUrl(new URL(`https://${host}${path}`), headers, signal);
      this.schemes.set(host, 'https');
      return res;
    } catch (err) {
      // An HTTP-only registry answers a TLS handshake with garbage or a reset: try plain HTTP where that is allowed.
      if (!this.mayBeHttp(host) || !isTlsFailure(err)) throw err;
      const res = await this.sendUrl(new URL(`http://${host}${path}`), headers, signal);
      this.schemes.set(host, 'http');
      return res;
    }
  }

  /** One request, following redirects (blob storage); credentials are not sent to another host. */
  private async sendUrl(url: URL, headers: Record<string, string>, signal?: AbortSignal, hops = 0): Promise<Response> {
    const ca = url.protocol === 'https:' ? await this.cas(url.host) : undefined;
    const res = await new Promise<Response>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
        url,
        { method: 'GET', headers, timeout: TIMEOUT_MS, ...(ca ? { ca } : {}), ...(signal ? { signal } : {}) },
        (body) => resolve({ status: body.statusCode ?? 0, headers: body.headers, body }),
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => reject(unreachable(url.host, err)));
      req.end();
    });
    if (res.status >= 300 && res.status < 400 && res.headers.location) {
      res.body.resume();
      if (hops >= 5) throw new MoatError(502, 'RegistryError', `${url.host}: too many redirects`);
      const next = new URL(res.headers.location, url);
      const { authorization: _, ...rest } = headers;
      return this.sendUrl(next, next.host === url.host ? headers : rest, signal, hops + 1);
    }
    return res;
  }

  private async cas(host: string): Promise<string[] | undefined> {
    if (!this.o.certsDir) return undefined;
    const dir = join(this.o.certsDir, host.replace(/[/\\]/g, '_'));
    const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.crt'));
    if (!files.length) return undefined;
    return [...rootCertificates, ...(await Promise.all(files.map((f) => readFile(join(dir, f), 'utf8'))))];
  }

  private mayBeHttp(host: string): boolean {
    const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
    return (
      name === 'localhost' ||
      name.startsWith('127.') ||
      name === '::1' ||
      (isIP(name) === 0 && name.endsWith('.localhost')) ||
      !!this.o.insecure?.includes(host)
    );
  }

  private async failure(res: Response, registry: string, what: string): Promise<MoatError> {
    const text = (await readLimited(res.body, 64 * 1024, registry).catch(() => Buffer.alloc(0))).toString();
    let message = text.slice(0, 300);
    try {
      const j = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
      if (j.errors?.length) message = j.errors.map((e) => `${e.code ?? ''} ${e.message ?? ''}`.trim()).join('; ');
    } catch {
      // not distribution's JSON error: the text as it is
    }
    if (res.status === 403) return new MoatError(403, 'RegistryUnauthorized', `registry ${registry} denied ${what}: ${message}`);
    if (res.status === 404) return new MoatError(404, 'ImageNotFound', `registry ${registry} has no ${what}: ${message}`);
    return new MoatError(502, 'RegistryError', `registry ${registry} answered ${res.status} for ${what}: ${message}`);
  }
}

function parseChallenge(h: string): { scheme: string; params: Record<string, string> } {
  const m = /^\s*(\w+)\s*(.*)$/.exec(h);
  const params: Record<string, string> = {};
  for (const p of (m?.[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) params[p[1]!.toLowerCase()] = p[2]!;
  return { scheme: (m?.[1] ?? '').toLowerCase(), params };
}

function isTlsFailure(err: unknown): boolean {
  const cause = (err as { cause?: NodeJS.ErrnoException }).cause;
  const code = cause?.code ?? '';
  return code === 'EPROTO' || code === 'ECONNRESET' || code.startsWith('ERR_SSL') || /wrong version number|packet length too long/i.test(cause?.message ?? '');
}

function unreachable(host: string, err: NodeJS.ErrnoException): Error {
  if (err.name === 'AbortError') return err;
  const why: Record<string, string> = {
    ECONNREFUSED: 'connection refused',
    ENOTFOUND: 'no such host',
    EAI_AGAIN: 'the host name does not resolve (DNS)',
    ETIMEDOUT: 'timed out',
    ECONNRESET: 'the connection was reset',
    EHOSTUNREACH: 'no route to host',
    DEPTH_ZERO_SELF_SIGNED_CERT: 'its certificate is self-signed: put its CA in the registry certs directory',
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'its certificate is not trusted: put its CA in the registry certs directory',
    SELF_SIGNED_CERT_IN_CHAIN: 'its certificate is not trusted: put its CA in the registry certs directory',
    ERR_TLS_CERT_ALTNAME_INVALID: 'its certificate is for another name',
  };
  const e = new MoatError(502, 'RegistryUnreachable', `cannot reach registry ${host}: ${why[err.code ?? ''] ?? err.message}`);
  return Object.assign(e, { cause: err });
}
