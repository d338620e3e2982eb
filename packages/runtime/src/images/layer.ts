import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { MoatError } from '@moat/core';
import { run } from '../run.js';
import { MEDIA } from './oci.js';

export { packLayer } from './layer-pack.js';

/** Bounds on what one layer may unpack to: a small compressed blob must not fill the disk (a zip bomb). */
export interface LayerLimits {
  maxBytes: number;
  maxEntries: number;
}

/** What a layer may contain beyond files, directories and links. */
export interface LayerPolicy {
  /** Character and block devices (a sandbox's /dev is its own, so images need none). */
  devices: boolean;
  /** Files with the setuid or setgid bit (root in a sandbox is root only in its user namespace). */
  setuid: boolean;
}

export const DEFAULT_LAYER_LIMITS: LayerLimits = { maxBytes: 8 * 2 ** 30, maxEntries: 1_000_000 };
export const DEFAULT_LAYER_POLICY: LayerPolicy = { devices: false, setuid: true };

export interface IngestOptions {
  mediaType: string;
  /** The blob's digest as the manifest gives it: checked over the bytes as they arrive (a build context has none). */
  digest?: string;
  /** The blob's size as the manifest gives it: more is cut off, less is a truncated download. */
  size?: number;
  /** The uncompressed tar's digest (the config's diff id), checked when the tar ends. */
  diffId?: string;
  dest: string;
  limits?: LayerLimits;
  policy?: LayerPolicy;
  /** Container ids to the ids stored on disk (the sandbox user-namespace range). */
  mapId?: (id: number) => number;
  onBytes?: (compressedSoFar: number) => void;
  signal?: AbortSignal;
}

const unsafe = (msg: string) => new MoatError(422, 'UnsafeLayer', msg);
const mismatch = (msg: string) => new MoatError(502, 'DigestMismatch', msg);
// Ids a layer's files may have: those a 65536-id user namespace maps.
const MAX_ID = 65535;

/**
 * Unpacks one layer (an untrusted tar, maybe compressed) into `dest` while
 * verifying its digest, size and diff id. An entry that would land outside
 * `dest` (`..`, or through a symlink, even one this layer made) is refused;
 * OCI whiteouts become overlayfs whiteouts. The caller discards `dest` on
 * any error, since the digests are only known to hold at the end.
 */
export async function ingestLayer(src: Readable, o: IngestOptions): Promise<{ size: number; opaque: string[] }> {
  const limits = o.limits ?? DEFAULT_LAYER_LIMITS;
  const policy = o.policy ?? DEFAULT_LAYER_POLICY;
  const mapId = o.mapId ?? ((id: number) => id);
  const what = o.digest ? `the layer ${o.digest}` : 'the archive';
  const blob = o.digest ? digestCounter(o.digest, o.size, o.onBytes) : undefined;
  const tarHash = createHash('sha256');
  let unpacked = 0;
  const tarCounter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      unpacked += chunk.length;
      if (unpacked > limits.maxBytes) return cb(unsafe(`${what} unpacks to more than ${limits.maxBytes} bytes (the limit)`));
      tarHash.update(chunk);
      cb(null, chunk);
    },
  });
  await mkdir(o.dest, { recursive: true });
  // Two pipelines: the blob is read and hashed to its end even when what it
  // carries does not decompress, since "the registry sent other bytes" (a
  // digest mismatch) is the error that explains a corrupt gzip.
  const head = decompressor(o.mediaType);
  let chainFailed = false;
  let waiting: (() => void) | undefined;
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      if (chainFailed || head.write(chunk)) return cb();
      waiting = cb;
      head.once('drain', () => {
        waiting = undefined;
        cb();
      });
    },
    final(cb) {
      if (!chainFailed) head.end();
      cb();
    },
  });
  const reading = pipeline(src, blob?.stream ?? new PassThrough(), sink, o.signal ? { signal: o.signal } : {});
  reading.catch((err: Error) => head.destroy(err));
  const out = new PassThrough();
  const extract = tar.extract();
  const chain = pipeline(head, tarCounter, out).catch((err: unknown) => {
    chainFailed = true;
    const resume = waiting;
    waiting = undefined;
    resume?.();
    extract.destroy(err as Error);
    throw err;
  });
  chain.catch(() => {}); // seen below, once
  out.pipe(extract);
  const w = new TreeWriter(o.dest, policy, mapId);
  let entries = 0;
  try {
    for await (const entry of extract) {
      if (++entries > limits.maxEntries) throw unsafe(`${what} has more than ${limits.maxEntries} entries`);
      await w.entry(entry.header, entry as AsyncIterable<Buffer>);
    }
    await chain;
    await reading;
  } catch (err) {
    const chainErr = await chain.then(
      () => undefined,
      (e: unknown) => e,
    );
    // The unpacker's own refusal first; then the stream's error, which says more than the extractor's "unexpected end".
    const own = noSpace(err);
    const cause = own instanceof MoatError ? own : (chainErr ?? err);
    if (blob && !(cause instanceof MoatError)) {
      const readErr = await reading.then(
        () => undefined,
        (e: unknown) => e,
      );
      if (readErr instanceof MoatError) throw readErr;
      if (readErr)
        throw new MoatError(502, 'TruncatedBlob', `the download of ${o.digest} broke off after ${blob.bytes()} bytes: ${(readErr as Error).message}`);
      blob.check();
      throw new MoatError(502, 'BadLayer', `${what} does not unpack: ${(cause as Error).message}`);
    }
    extract.destroy();
    src.destroy();
    reading.catch(() => {});
    throw cause;
  }
  blob?.check();
  const diff = `sha256:${tarHash.digest('hex')}`;
  if (o.diffId && diff !== o.diffId) throw mismatch(`${what} unpacked to ${diff}, but the image config says ${o.diffId}`);
  await w.finish();
  return { size: w.bytes, opaque: w.opaque };
}

/** Hashes and counts a blob as it passes; `check` at the end compares both with the manifest. */
function digestCounter(digest: string, size: number | undefined, onBytes?: (n: number) => void) {
  const h = createHash('sha256');
  let n = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _e, cb) {
      n += chunk.length;
      if (size !== undefined && n > size) return cb(mismatch(`the blob ${digest} is larger than the ${size} bytes its manifest says`));
      h.update(chunk);
      onBytes?.(n);
      cb(null, chunk);
    },
  });
  return {
    stream,
    bytes: () => n,
    check() {
      if (size !== undefined && n < size) throw new MoatError(502, 'TruncatedBlob', `the blob ${digest} ended after ${n} of its ${size} bytes`);
      const got = `sha256:${h.digest('hex')}`;
      if (got !== digest) throw mismatch(`the blob ${digest} has the digest ${got}: the registry or archive sent other bytes`);
    },
  };
}

function decompressor(mediaType: string): Transform | PassThrough {
  if (mediaType.endsWith('+gzip') || mediaType.endsWith('.gzip')) return createGunzip();
  if (mediaType.endsWith('+zstd')) return zstdDecompressor();
  if (mediaType === MEDIA.ociLayer || mediaType.endsWith('.tar') || mediaType === 'application/vnd.docker.image.rootfs.diff.tar') return new PassThrough();
  throw new MoatError(422, 'UnsupportedLayer', `layers of media type ${mediaType} are not supported (tar, tar+gzip, tar+zstd are)`);
}

/** Node 20's zlib has no zstd: Debian's zstd does it in a child process. */
function zstdDecompressor(): Transform {
  const child = spawn('zstd', ['-dc', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const t = new Transform({
    transform(chunk: Buffer, _e, cb) {
      if (!child.stdin.write(chunk)) child.stdin.once('drain', () => cb());
      else cb();
    },
    flush(cb) {
      child.stdin.end();
      child.on('close', (code) => cb(code === 0 ? null : unsafe(`the zstd layer does not decompress: ${stderr.trim() || `exit ${code}`}`)));
    },
    destroy(err, cb) {
      child.kill();
      cb(err);
    },
  });
  child.stdout.on('data', (d: Buffer) => t.push(d));
  child.stdin.on('error', () => {});
  return t;
}

type Header = tar.Header;

/** Writes a layer's entries under its root, refusing any that would leave it. */
class TreeWriter {
  bytes = 0;
  readonly opaque: string[] = [];
  private readonly dirs: { path: string; mtime: Date | undefined; mode: number }[] = [];
  // Parents checked once (lstat per path component per entry is most of an unpack's syscalls).
  private readonly dirsSeen = new Set<string>();

  constructor(
    private readonly root: string,
    private readonly policy: LayerPolicy,
    private readonly mapId: (id: number) => number,
  ) {}

  async entry(h: Header, body: AsyncIterable<Buffer>): Promise<void> {
    const parts = entryParts(h.name);
    if (!parts.length) return drain(body);
    const base = parts[parts.length - 1]!;
    const parent = parts.slice(0, -1);
    await this.ensureDir(parent);
    // OCI whiteouts: `.wh..wh..opq` hides the lower layers' contents of its directory, `.wh.x` hides `x`.
    if (base === '.wh..wh..opq') {
      await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(this.root, ...parent)]);
      this.opaque.push(parent.join('/'));
      return drain(body);
    }
    const target = join(this.root, ...parent, base.startsWith('.wh.') ? base.slice(4) : base);
    if (base.startsWith('.wh.')) {
      if (base.length === 4) throw unsafe(`the layer has a whiteout without a name: ${h.name}`);
      await this.replace(target);
      await run('mknod', [target, 'c', '0', '0']);
      await this.own(target, h);
      return drain(body);
    }
    const mode = (h.mode ?? 0o644) & 0o7777;
    if (mode & 0o6000 && !this.policy.setuid && h.type === 'file') throw unsafe(`${h.name} is setuid or setgid, which this store refuses`);
    const existing = lstatOrUndefined(target);
    if (existing && !(existing.isDirectory() && h.type === 'directory')) await this.replace(target);
    switch (h.type) {
      case 'directory':
        mkdirSync(target, { recursive: true });
        await this.own(target, h);
        chmodSync(target, mode);
        this.dirs.push({ path: target, mtime: h.mtime, mode });
        return drain(body);
      case 'file':
      case 'contiguous-file': {
        const fd = openSync(target, 'wx', 0o600);
        try {
          for await (const chunk of body) {
            // A short write is how a full disk first shows: write the rest, and ENOSPC follows.
            for (let off = 0; off < chunk.length;) off += writeSync(fd, chunk, off);
            this.bytes += chunk.length;
          }
          const [uid, gid] = this.ids(h);
          fchownSync(fd, uid, gid);
          fchmodSync(fd, mode);
          if (h.mtime) futimesSync(fd, h.mtime, h.mtime);
        } finally {
          closeSync(fd);
        }
        return;
      }
      case 'symlink':
        // The target is read inside the sandbox's root, so an absolute one is fine: what is refused is writing through it.
        symlinkSync(h.linkname ?? '', target);
        await this.own(target, h);
        if (h.mtime) lutimesSync(target, h.mtime, h.mtime);
        return drain(body);
      case 'link': {
        const from = entryParts(h.linkname ?? '');
        if (!from.length) throw unsafe(`the hard link ${h.name} has no target`);
        await this.ensureDir(from.slice(0, -1), { create: false });
        const st = lstatOrUndefined(join(this.root, ...from));
        if (!st || st.isDirectory()) throw unsafe(`the hard link ${h.name} points at ${h.linkname}, which is not a file in this layer`);
        linkSync(join(this.root, ...from), target);
        return drain(body);
      }
      case 'character-device':
      case 'block-device':
        if (!this.policy.devices) throw unsafe(`${h.name} is a device node, which this store refuses`);
        await run('mknod', [target, h.type === 'block-device' ? 'b' : 'c', String(h.devmajor ?? 0), String(h.devminor ?? 0)]);
        await this.own(target, h);
        chmodSync(target, mode);
        return drain(body);
      case 'fifo':
        await run('mkfifo', ['-m', mode.toString(8), target]);
        await this.own(target, h);
        return drain(body);
      default:
        // pax headers and GNU long names are folded in by the parser; anything else has no place in a root.
        throw unsafe(`${h.name} is a tar entry of type ${h.type}, which a layer cannot have`);
    }
  }

  /** Directories' times last: every entry written into one changed its mtime. */
  async finish(): Promise<void> {
    for (const d of this.dirs.reverse()) if (d.mtime) utimesSync(d.path, d.mtime, d.mtime);
  }

  /** Each of `parts` is a directory (made if missing) and none is a symlink: nothing is written through one. */
  private async ensureDir(parts: string[], o: { create: boolean } = { create: true }): Promise<void> {
    let p = this.root;
    for (const part of parts) {
      p = join(p, part);
      if (this.dirsSeen.has(p)) continue;
      const st = lstatOrUndefined(p);
      if (st?.isDirectory()) {
        this.dirsSeen.add(p);
        continue;
      }
      if (st?.isSymbolicLink()) throw unsafe(`the layer writes through the symlink ${parts.join('/')}`);
      if (st || !o.create) throw unsafe(`the layer writes under ${parts.join('/')}, which is not a directory`);
      mkdirSync(p);
      lchownSync(p, this.mapId(0), this.mapId(0));
      this.dirsSeen.add(p);
    }
  }

  /** Removes what an entry replaces; directories under it are no longer known to be directories. */
  private async replace(target: string): Promise<void> {
    await rm(target, { recursive: true, force: true });
    for (const d of this.dirsSeen) if (d === target || d.startsWith(`${target}/`)) this.dirsSeen.delete(d);
  }

  private async own(path: string, h: Header): Promise<void> {
    const [uid, gid] = this.ids(h);
    lchownSync(path, uid, gid);
  }

  /** The entry's owner as stored (mapped into the sandbox range). */
  private ids(h: Header): [number, number] {
    const uid = h.uid ?? 0;
    const gid = h.gid ?? 0;
    if (uid > MAX_ID || gid > MAX_ID || uid < 0 || gid < 0) throw unsafe(`${h.name} is owned by ${uid}:${gid}; a sandbox maps ids 0-${MAX_ID}`);
    return [this.mapId(uid), this.mapId(gid)];
  }
}

/** A tar name as path parts under the root: `./a/b`, `/a/b` and `a//b/` are `a/b`; `..` anywhere is refused. */
export function entryParts(name: string): string[] {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(`the layer has an entry outside its root: ${JSON.stringify(name)}`);
  if (name.includes('\0')) throw unsafe(`the layer has an entry with a NUL in its name`);
  return parts;
}

async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  for await (const _ of body);
}

function noSpace(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT' ? new MoatError(507, 'InsufficientStorage', 'no space left in the image store while unpacking a layer') : err;
}

/**
 * Metadata calls are synchronous in the unpacker: each takes microseconds, and
 * a round trip through libuv's thread pool per call was most of an unpack's time.
 */
function lstatOrUndefined(p: string) {
  return lstatSync(p, { throwIfNoEntry: false });
}
