import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { access, mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { MoatError, badRequest, tooLarge } from '@moat/core';
import { DEFAULT_LAYER_LIMITS, entryParts, isGzip } from '@moat/runtime';
import tar from 'tar-stream';
import { filesDir } from './template-dockerfile.js';

/** How long an upload link works: the SDK uses it at once. */
const TOKEN_TTL_MS = 60 * 60 * 1000;
const ENTRY_TYPES = new Set(['file', 'directory', 'symlink', 'link']);

/**
 * The files of E2B COPY steps: each arrives as a (gzip) tar of paths in the
 * SDK's file context, PUT to a link this server hands out, and is kept by its
 * files hash per namespace (the hash is the client's, so one namespace's
 * upload never stands for another's). Nothing is unpacked here: a build's
 * context tar carries them, and the image service unpacks that with its checks.
 */
export class TemplateFiles {
  private readonly links = new Map<string, { namespace: string; hash: string; expires: number }>();

  constructor(
    private readonly dir: string,
    private readonly maxBytes: number,
  ) {}

  path(namespace: string, hash: string): string {
    return join(this.dir, namespace, hash);
  }

  async present(namespace: string, hash: string): Promise<boolean> {
    return access(this.path(namespace, hash)).then(
      () => true,
      () => false,
    );
  }

  /** An unguessable one-time token for the upload of `hash` (the SDK sends no API key with it). */
  grant(namespace: string, hash: string): string {
    const now = Date.now();
    for (const [t, l] of this.links) if (l.expires < now) this.links.delete(t);
    const token = randomBytes(32).toString('base64url');
    this.links.set(token, { namespace, hash, expires: now + TOKEN_TTL_MS });
    return token;
  }

  /** Takes an upload: bounded by the server's upload limit, checked as a tar before it counts as present. */
  async receive(token: string, body: Readable, declared: number): Promise<void> {
    const link = this.links.get(token);
    if (!link || link.expires < Date.now()) throw new MoatError(404, 'NotFound', 'this upload link is unknown or has expired: ask for a new one');
    this.links.delete(token);
    if (declared > this.maxBytes) throw tooLarge(`the upload (${declared} bytes) is larger than the limit of ${this.maxBytes} bytes`);
    const final = this.path(link.namespace, link.hash);
    await mkdir(join(final, '..'), { recursive: true });
    const tmp = `${final}.${randomBytes(8).toString('hex')}.part`;
    let n = 0;
    const limit = new Transform({
      transform: (chunk: Buffer, _e, cb) => {
        n += chunk.length;
        if (n > this.maxBytes) cb(tooLarge(`the upload is larger than the limit of ${this.maxBytes} bytes`));
        else cb(null, chunk);
      },
    });
    try {
      await pipeline(body, limit, createWriteStream(tmp));
      await copyEntries(tmp, '', null);
      await rename(tmp, final);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err instanceof MoatError ? err : badRequest(`the upload could not be read as a tar archive: ${(err as Error).message}`);
    }
  }

  /** A build context as a tar: the Dockerfile, and each upload's entries under its hash's directory (filesDir). */
  async writeContext(namespace: string, dockerfile: string, hashes: string[], out: string): Promise<void> {
    const pack = tar.pack();
    const written = pipeline(pack, createWriteStream(out));
    try {
      await entry(pack, { name: 'Dockerfile', mode: 0o644 }, Buffer.from(dockerfile));
      for (const hash of hashes) await copyEntries(this.path(namespace, hash), `${filesDir(hash)}/`, pack);
      pack.finalize();
    } catch (err) {
      pack.destroy(err as Error);
      await written.catch(() => {});
      throw err;
    }
    await written;
  }
}

/**
 * Reads a (gzip) tar, refusing what a build context may not hold; with `pack`, writes its entries there
 * under `prefix`, owned by root (COPY makes them root's anyway). Bounded as an image layer is: a small
 * gzip must not unpack to a full disk.
 */
async function copyEntries(file: string, prefix: string, pack: tar.Pack | null): Promise<void> {
  const extract = tar.extract();
  const source = (await isGzip(file)) ? createReadStream(file).pipe(createGunzip()) : createReadStream(file);
  const fed = pipeline(source, extract);
  let bytes = 0;
  let entries = 0;
  try {
    for await (const e of extract) {
      const h = e.header;
      if (!ENTRY_TYPES.has(h.type ?? 'file'))
        throw badRequest(`the upload holds ${JSON.stringify(h.name)}, a ${h.type}: only files, directories and links are copied`);
      if ((h.mode ?? 0) & 0o6000) throw badRequest(`the upload holds ${JSON.stringify(h.name)} with a setuid or setgid bit, which builds refuse`);
      bytes += h.size ?? 0;
      if (++entries > DEFAULT_LAYER_LIMITS.maxEntries || bytes > DEFAULT_LAYER_LIMITS.maxBytes)
        throw tooLarge(`the upload unpacks to more than ${DEFAULT_LAYER_LIMITS.maxEntries} entries or ${DEFAULT_LAYER_LIMITS.maxBytes} bytes`);
      const name = named(prefix, h.name, h.type === 'directory');
      if (!pack) {
        e.resume();
        continue;
      }
      const header: Partial<tar.Header> & { name: string } = { name, type: h.type, mode: h.mode, mtime: h.mtime, uid: 0, gid: 0 };
      if (h.type === 'symlink') header.linkname = h.linkname;
      if (h.type === 'link') header.linkname = named(prefix, h.linkname ?? '', false);
      if (h.type === 'file') await entry(pack, { ...header, size: h.size }, e as AsyncIterable<Buffer>);
      else {
        e.resume();
        await entry(pack, header);
      }
    }
    await fed;
  } catch (err) {
    extract.destroy();
    await fed.catch(() => {});
    throw err;
  }
}

/** An entry's name under `prefix`, refused if it would leave it. */
function named(prefix: string, name: string, dir: boolean): string {
  let parts: string[];
  try {
    parts = entryParts(name);
  } catch (err) {
    throw badRequest(`the upload is not a plain file tree: ${(err as Error).message}`);
  }
  if (!parts.length) return prefix || './';
  return `${prefix}${parts.join('/')}${dir ? '/' : ''}`;
}

/** One entry into `pack`: its content a buffer, or the entry being read from another tar. */
function entry(pack: tar.Pack, header: Partial<tar.Header> & { name: string }, body?: Buffer | AsyncIterable<Buffer>): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (!body || Buffer.isBuffer(body)) return void pack.entry(header, body ?? Buffer.alloc(0), done);
    const sink = pack.entry(header, done);
    void (async () => {
      try {
        for await (const chunk of body) if (!sink.write(chunk)) await new Promise<void>((r) => sink.once('drain', () => r()));
        sink.end(undefined);
      } catch (err) {
        sink.destroy(err as Error);
      }
    })();
  });
}
