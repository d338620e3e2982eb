import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { dirname, join, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AwsClient } from 'aws4fetch';
import { MoatError } from '@moat/core';

/**
 * Where backups go. A put is atomic: the object appears under its key only
 * once it is complete (a temporary name, then a rename; S3 has no partial
 * objects), so a crash mid-backup leaves nothing a restore could take.
 */
export interface ObjectStore {
  /** For messages: `local:/var/lib/moat/backups`, `s3:https://host/bucket`. */
  readonly name: string;
  readonly kind: 'local' | 's3';
  put(key: string, body: Readable): Promise<void>;
  get(key: string): Promise<Readable>;
  delete(key: string): Promise<void>;
  /** Removes what interrupted puts left behind (on start-up). */
  cleanup(): Promise<void>;
}

/** Keys are made by Moat (`<namespace>/<backup id>.img.zst`), never taken from a request; still, nothing may leave the store. */
function checkKey(key: string): string {
  if (!/^[a-z0-9][a-z0-9./-]{0,300}$/.test(key) || key.split('/').some((p) => p === '' || p === '.' || p === '..')) throw new Error(`bad object key "${key}"`);
  return key;
}

const noSpace = (err: unknown) => ['ENOSPC', 'EDQUOT'].includes((err as NodeJS.ErrnoException)?.code ?? '');

export const storeFull = (store: ObjectStore, key: string) =>
  new MoatError(
    507,
    'InsufficientStorage',
    `backup store ${store.name}: no space left on device while writing "${key}"; the partial backup was removed and the volume is unchanged`,
    { store: store.name },
  );

/** The default: a directory on this host (`<dataDir>/backups`, or $MOAT_BACKUP_DIR). */
export class LocalObjectStore implements ObjectStore {
  readonly kind = 'local' as const;
  readonly name: string;

  constructor(readonly dir: string) {
    this.name = `local:${dir}`;
  }

  private file(key: string): string {
    const f = resolve(this.dir, checkKey(key));
    if (!f.startsWith(resolve(this.dir) + sep)) throw new Error(`bad object key "${key}"`);
    return f;
  }

  async put(key: string, body: Readable): Promise<void> {
    const file = this.file(key);
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await pipeline(body, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }));
      const fh = await open(tmp, 'r+');
      try {
        await fh.sync(); // durable before it has its name
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      if (noSpace(err)) throw storeFull(this, key);
      throw err;
    }
  }

  async get(key: string): Promise<Readable> {
    const file = this.file(key);
    await stat(file).catch(() => {
      throw new MoatError(404, 'NotFound', `backup object "${key}" is missing from ${this.name}`);
    });
    return createReadStream(file);
  }

  async delete(key: string): Promise<void> {
    await rm(this.file(key), { force: true });
  }

  async cleanup(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const walk = async (d: string): Promise<void> => {
      for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
        const p = join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else if (e.name.includes('.tmp-')) await rm(p, { force: true });
      }
    };
    await walk(this.dir);
  }
}

export interface S3Options {
  /** `http(s)://host:port`: any S3-compatible endpoint (path-style requests). */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region?: string;
  /** Objects are spooled here first: S3 wants a length up front. */
  spoolDir: string;
}

/**
 * Any S3-compatible endpoint, path-style, signed with SigV4 (aws4fetch). An
 * object is spooled to a local file first, then sent with its length in one
 * PUT (S3 never shows a partial object).
 */
export class S3ObjectStore implements ObjectStore {
  readonly kind = 's3' as const;
  readonly name: string;
  private readonly aws: AwsClient;

  constructor(private readonly o: S3Options) {
    this.name = `s3:${o.endpoint.replace(/\/$/, '')}/${o.bucket}`;
    this.aws = new AwsClient({ accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey, service: 's3', region: o.region ?? 'us-east-1' });
  }

  private url(key: string): string {
    return `${this.o.endpoint.replace(/\/$/, '')}/${encodeURIComponent(this.o.bucket)}/${checkKey(key).split('/').map(encodeURIComponent).join('/')}`;
  }

  private async send(method: string, key: string, body?: { file: string; size: number }): Promise<IncomingMessage> {
    const url = this.url(key);
    const signed = await this.aws.sign(url, {
      method,
      headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', ...(body ? { 'content-length': String(body.size) } : {}) },
    });
    const headers: Record<string, string> = {};
    signed.headers.forEach((v, k) => (headers[k] = v));
    const req = (url.startsWith('https:') ? httpsRequest : httpRequest)(url, { method, headers });
    const answer = new Promise<IncomingMessage>((res, rej) => {
      req.on('response', res);
      req.on('error', rej);
    });
    if (body) await pipeline(createReadStream(body.file), req);
    else req.end();
    const res = await answer;
    if ((res.statusCode ?? 500) >= 300) {
      let text = '';
      for await (const c of res) text += String(c);
      const code = /<Code>([^<]+)<\/Code>/.exec(text)?.[1] ?? `HTTP ${res.statusCode}`;
      if (res.statusCode === 404) throw new MoatError(404, 'NotFound', `backup object "${key}" is missing from ${this.name}`);
      if (code === 'EntityTooLarge' || code === 'QuotaExceeded' || res.statusCode === 507) throw storeFull(this, key);
      throw new MoatError(502, 'BackupStoreError', `backup store ${this.name}: ${method} "${key}" failed: ${code}`);
    }
    return res;
  }

  async put(key: string, body: Readable): Promise<void> {
    await mkdir(this.o.spoolDir, { recursive: true, mode: 0o700 });
    const tmp = join(this.o.spoolDir, `${randomBytes(8).toString('hex')}.tmp-spool`);
    try {
      await pipeline(body, createWriteStream(tmp, { flags: 'wx', mode: 0o600 })).catch((err: unknown) => {
        if (noSpace(err))
          throw new MoatError(
            507,
            'InsufficientStorage',
            `backup store ${this.name}: no space left on device in its spool directory ${this.o.spoolDir}; the partial backup was removed and the volume is unchanged`,
          );
        throw err;
      });
      const res = await this.send('PUT', key, { file: tmp, size: (await stat(tmp)).size });
      res.resume();
    } finally {
      await rm(tmp, { force: true });
    }
  }

  async get(key: string): Promise<Readable> {
    return this.send('GET', key);
  }

  async delete(key: string): Promise<void> {
    const res = await this.send('DELETE', key).catch((err: unknown) => {
      if (err instanceof MoatError && err.code === 404) return undefined;
      throw err;
    });
    res?.resume();
  }

  async cleanup(): Promise<void> {
    for (const f of await readdir(this.o.spoolDir).catch(() => [] as string[])) if (f.includes('.tmp-')) await rm(join(this.o.spoolDir, f), { force: true });
  }
}

/** The store the server options or the environment name: S3 when an endpoint is given, else a local directory. */
export function objectStoreFromEnv(dataDir: string, env: NodeJS.ProcessEnv = process.env): ObjectStore {
  const endpoint = env.MOAT_BACKUP_S3_ENDPOINT;
  if (endpoint) {
    const need = (k: string) => {
      const v = env[k];
      if (!v) throw new Error(`${k} is required with MOAT_BACKUP_S3_ENDPOINT`);
      return v;
    };
    return new S3ObjectStore({
      endpoint,
      bucket: need('MOAT_BACKUP_S3_BUCKET'),
      accessKeyId: need('MOAT_BACKUP_S3_ACCESS_KEY_ID'),
      secretAccessKey: need('MOAT_BACKUP_S3_SECRET_ACCESS_KEY'),
      ...(env.MOAT_BACKUP_S3_REGION ? { region: env.MOAT_BACKUP_S3_REGION } : {}),
      spoolDir: join(dataDir, 'backups-spool'),
    });
  }
  return new LocalObjectStore(env.MOAT_BACKUP_DIR ?? join(dataDir, 'backups'));
}
