import { randomUUID } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MoatError, notFound } from '@moat/core';
import { hostUid } from '../userns.js';
import { IMAGE_CATALOG } from './catalog.js';
import { buildCatalogLayer } from './catalog-build.js';
import { DEFAULT_LAYER_LIMITS, DEFAULT_LAYER_POLICY, ingestLayer, type LayerLimits, type LayerPolicy } from './layer.js';
import type { Image, ImageRecord, Progress } from './image.js';
import { isDigest, type ImageSource } from './oci.js';

export type PullEvent =
  | { type: 'resolved'; digest: string; layers: number; bytes: number }
  | { type: 'layer'; digest: string; status: 'exists' | 'downloading' | 'done'; current?: number; total?: number }
  | { type: 'stored'; digest: string };

export interface PullOptions {
  onEvent?: (e: PullEvent) => void;
  signal?: AbortSignal;
  /** The name the image is recorded under; the source's name by default. */
  name?: string;
}

/**
 * The image store, content-addressed as containerd's is:
 *   layers/<diff hex>/fs      one unpacked layer, shared by every image and sandbox that has it
 *   aliases/<diff hex>        another diff id for the same tree (a layer re-tarred on export)
 *   manifests/<hex>.json      one image: its manifest, config, and layers
 * Names and who may see them live in the server; a sandbox records the
 * manifest digest, so a tag that moves never changes it. Every write goes
 * to tmp/ first and is renamed into place, so a failure leaves nothing
 * half-written behind.
 */
export class ImageStore {
  private readonly inflight = new Map<string, Promise<unknown>>();
  readonly limits: LayerLimits;
  readonly policy: LayerPolicy;

  constructor(
    readonly dir: string,
    o: { limits?: LayerLimits; policy?: LayerPolicy } = {},
  ) {
    this.limits = o.limits ?? DEFAULT_LAYER_LIMITS;
    this.policy = o.policy ?? DEFAULT_LAYER_POLICY;
  }

  async list(): Promise<Image[]> {
    const files = await readdir(join(this.dir, 'manifests')).catch(() => [] as string[]);
    const images = await Promise.all(files.filter((f) => f.endsWith('.json')).map((f) => this.byDigest(`sha256:${f.slice(0, -5)}`).catch(() => undefined)));
    return images.filter((i): i is Image => !!i);
  }

  async has(digest: string): Promise<boolean> {
    return this.byDigest(digest).then(
      () => true,
      () => false,
    );
  }

  async byDigest(digest: string): Promise<Image> {
    const r = await this.record(digest).catch(() => undefined);
    if (!r) {
      const old = await this.legacy(digest);
      if (old) return old;
      throw notFound(`image ${digest} is not in the image store`);
    }
    return {
      digest: r.digest,
      name: r.name,
      configDigest: r.configDigest,
      config: r.config.config ?? {},
      layers: r.layers.map((d) => this.layerFs(d)),
      sizeBytes: r.sizeBytes,
      createdAt: r.createdAt,
    };
  }

  /** The catalog image by name, built from Debian packages the first time (about a minute). */
  async ensureCatalog(name: string, progress: Progress = () => {}): Promise<Image> {
    const def = IMAGE_CATALOG[name];
    if (!def) throw notFound(`"${name}" is not a catalog image; the catalog has: ${Object.keys(IMAGE_CATALOG).join(', ')}`);
    const known = await this.catalogDigest(name);
    if (known && (await this.has(known))) return this.byDigest(known);
    return this.once(`catalog:${name}`, async () => {
      const image = await buildCatalogLayer(def, this, progress);
      await this.writeAtomic(join(this.dir, 'catalog', name), image.digest);
      return image;
    });
  }

  /** The digest the catalog image was last built as, if it was (`refs/` is where the store before layers kept it). */
  async catalogDigest(name: string): Promise<string | undefined> {
    for (const dir of ['catalog', 'refs']) {
      const d = (await readFile(join(this.dir, dir, name), 'utf8').catch(() => '')).trim();
      if (d) return d;
    }
    return undefined;
  }

  /** Adds the image a source holds: layers the store has are not fetched again, each new one is verified as it unpacks. */
  async pull(source: ImageSource, o: PullOptions = {}): Promise<Image> {
    const emit = o.onEvent ?? (() => {});
    const r = await source.resolve();
    const { manifest, config } = r;
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw new MoatError(
        502,
        'BadManifest',
        `${source.name}: the config lists ${config.rootfs.diff_ids.length} layers, the manifest ${manifest.layers.length}`,
      );
    }
    if (config.os !== 'linux' || config.architecture !== 'amd64') {
      throw new MoatError(422, 'PlatformNotSupported', `${source.name} is an image for ${config.os}/${config.architecture}; Moat runs linux/amd64`);
    }
    emit({ type: 'resolved', digest: r.digest, layers: manifest.layers.length, bytes: manifest.layers.reduce((n, l) => n + l.size, 0) });
    // The first layer that fails stops the others' downloads.
    const failed = new AbortController();
    const signal = o.signal ? AbortSignal.any([o.signal, failed.signal]) : failed.signal;
    const layers = await mapLimit(manifest.layers, 3, failed, async (desc, i) => {
      const diffId = config.rootfs.diff_ids[i]!;
      const local = await this.localLayer(diffId);
      if (local) {
        emit({ type: 'layer', digest: desc.digest, status: 'exists' });
        return local;
      }
      await this.once(`layer:${diffId}`, async () => {
        if (await this.localLayer(diffId)) return;
        emit({ type: 'layer', digest: desc.digest, status: 'downloading', current: 0, total: desc.size });
        let shown = 0;
        await this.addLayer(diffId, async (dest) => {
          const blob = await source.blob(desc, signal);
          return ingestLayer(blob, {
            mediaType: desc.mediaType,
            digest: desc.digest,
            size: desc.size,
            diffId,
            dest,
            limits: this.limits,
            policy: this.policy,
            mapId: hostUid,
            onBytes: (current) => {
              // A line per 4 MiB, not per chunk.
              if (current - shown < 4 * 2 ** 20 && current < desc.size) return;
              shown = current;
              emit({ type: 'layer', digest: desc.digest, status: 'downloading', current, total: desc.size });
            },
            signal,
          });
        });
      });
      emit({ type: 'layer', digest: desc.digest, status: 'done' });
      return diffId;
    });
    const image = await this.addImage(
      { digest: r.digest, name: o.name ?? source.name, manifest, config, configDigest: manifest.config.digest, layers },
      r.configBytes,
    );
    emit({ type: 'stored', digest: r.digest });
    return image;
  }

  /**
   * Records an image whose layers are all in the store. `configBytes` are kept
   * as they came, since the config's digest is over its exact bytes.
   */
  async addImage(r: Omit<ImageRecord, 'sizeBytes' | 'createdAt'>, configBytes: Buffer): Promise<Image> {
    if (!isDigest(r.digest)) throw new MoatError(502, 'BadManifest', `malformed image digest ${r.digest}`);
    let sizeBytes = 0;
    for (const d of r.layers) sizeBytes += (await this.layerInfo(d)).size;
    const record: ImageRecord = { ...r, sizeBytes, createdAt: new Date().toISOString() };
    await this.writeAtomic(join(this.dir, 'configs', hex(r.configDigest)), configBytes);
    await this.writeAtomic(this.recordPath(r.digest), JSON.stringify(record));
    return this.byDigest(r.digest);
  }

  /** Unpacks a layer into tmp/ with `fill`, then renames it into place: nothing half-written is ever a layer. */
  async addLayer(diffId: string, fill: (dest: string) => Promise<{ size: number; opaque?: string[] } | void>): Promise<string> {
    const tmp = await this.tmpDir();
    try {
      const filled = await fill(join(tmp, 'fs'));
      const size = filled?.size ?? (await treeSize(join(tmp, 'fs')));
      // Opaque directories are an xattr on the tree; kept here too so an export need not read xattrs back.
      const opaque = filled?.opaque?.length ? { opaque: filled.opaque } : {};
      await writeFile(join(tmp, 'layer.json'), JSON.stringify({ diffId, size, ...opaque, createdAt: new Date().toISOString() }));
      await mkdir(join(this.dir, 'layers'), { recursive: true });
      await rename(tmp, this.layerDir(diffId)).catch(async (err: NodeJS.ErrnoException) => {
        // Another server on this host stored the same layer first: theirs is as good.
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      });
      return diffId;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /** Records that `alias` (a diff id) is the same tree as the stored layer `diffId`. */
  async addAlias(alias: string, diffId: string): Promise<void> {
    if (alias !== diffId) await this.writeAtomic(join(this.dir, 'aliases', hex(alias)), diffId);
  }

  /** The stored layer a diff id names, directly or through an alias; undefined when not stored. */
  async localLayer(diffId: string): Promise<string | undefined> {
    if (await exists(join(this.layerDir(diffId), 'layer.json'))) return diffId;
    const target = (await readFile(join(this.dir, 'aliases', hex(diffId)), 'utf8').catch(() => '')).trim();
    return target && (await exists(join(this.layerDir(target), 'layer.json'))) ? target : undefined;
  }

  async rawRecord(digest: string): Promise<ImageRecord> {
    return this.record(digest);
  }

  /** Forgets an image; its layers stay until `pruneLayers` finds no image using them. */
  async remove(digest: string): Promise<void> {
    await rm(this.recordPath(digest), { force: true });
    await rm(join(this.dir, 'exports', hex(digest)), { recursive: true, force: true });
  }

  /**
   * Removes layers no image uses, and leftovers of interrupted writes. Young
   * ones are spared: a pull on another server may not have recorded its image yet.
   */
  async pruneLayers(o: { minAgeMs?: number } = {}): Promise<{ layers: number; bytes: number }> {
    const minAge = o.minAgeMs ?? 10 * 60_000;
    const used = new Set<string>();
    for (const f of await readdir(join(this.dir, 'manifests')).catch(() => [] as string[])) {
      const r = JSON.parse(await readFile(join(this.dir, 'manifests', f), 'utf8').catch(() => '{}')) as Partial<ImageRecord>;
      for (const l of r.layers ?? []) used.add(hex(l));
    }
    let layers = 0;
    let bytes = 0;
    const now = Date.now();
    for (const h of await readdir(join(this.dir, 'layers')).catch(() => [] as string[])) {
      if (used.has(h)) continue;
      const info = await this.layerInfo(`sha256:${h}`).catch(() => undefined);
      const age =
        now -
        (await stat(join(this.dir, 'layers', h)).then(
          (s) => s.mtimeMs,
          () => now,
        ));
      if (age < minAge) continue;
      await rm(join(this.dir, 'layers', h), { recursive: true, force: true });
      layers++;
      bytes += info?.size ?? 0;
    }
    for (const a of await readdir(join(this.dir, 'aliases')).catch(() => [] as string[])) {
      const target = (await readFile(join(this.dir, 'aliases', a), 'utf8').catch(() => '')).trim();
      if (!target || !(await exists(this.layerDir(target)))) await rm(join(this.dir, 'aliases', a), { force: true });
    }
    for (const t of await readdir(join(this.dir, 'tmp')).catch(() => [] as string[])) {
      const age =
        now -
        (await stat(join(this.dir, 'tmp', t)).then(
          (s) => s.mtimeMs,
          () => now,
        ));
      if (age > 6 * 3600_000) await rm(join(this.dir, 'tmp', t), { recursive: true, force: true });
    }
    return { layers, bytes };
  }

  /** A fresh directory under tmp/ on the store's filesystem (so a rename puts it in place). */
  async tmpDir(): Promise<string> {
    const d = join(this.dir, 'tmp', randomUUID());
    await mkdir(d, { recursive: true });
    return d;
  }

  private async record(digest: string): Promise<ImageRecord> {
    const r = JSON.parse(await readFile(this.recordPath(digest), 'utf8').catch(() => 'null')) as ImageRecord | null;
    if (!r) throw notFound(`image ${digest} is not in the image store`);
    return r;
  }

  /** An image of the store before layers (one tree per image, `sha256/<hex>/rootfs`), which sandboxes made then still name. */
  private async legacy(digest: string): Promise<Image | undefined> {
    const dir = join(this.dir, 'sha256', hex(digest));
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8').catch(() => 'null')) as {
      name: string;
      sizeBytes: number;
      createdAt: string;
    } | null;
    if (!meta) return undefined;
    return { digest, name: meta.name, configDigest: digest, config: {}, layers: [join(dir, 'rootfs')], sizeBytes: meta.sizeBytes, createdAt: meta.createdAt };
  }

  async layerInfo(diffId: string): Promise<{ size: number; opaque?: string[] }> {
    return JSON.parse(await readFile(join(this.layerDir(diffId), 'layer.json'), 'utf8')) as { size: number; opaque?: string[] };
  }

  private recordPath(digest: string) {
    return join(this.dir, 'manifests', `${hex(digest)}.json`);
  }

  private layerDir(diffId: string) {
    return join(this.dir, 'layers', hex(diffId));
  }

  private layerFs(diffId: string) {
    return join(this.layerDir(diffId), 'fs');
  }

  private async writeAtomic(path: string, data: string | Buffer): Promise<void> {
    await mkdir(join(path, '..'), { recursive: true });
    const tmp = `${path}.${randomUUID()}.tmp`;
    try {
      await writeFile(tmp, data);
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw noSpace(err);
    }
  }

  /** One run of `fn` per key in this process; concurrent callers share it. */
  private once<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let p = this.inflight.get(key) as Promise<T> | undefined;
    if (!p) {
      p = fn().finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }
}

function hex(digest: string): string {
  if (!isDigest(digest)) throw new MoatError(400, 'BadDigest', `malformed digest ${JSON.stringify(digest)}: expected sha256:<64 hex digits>`);
  return digest.slice(7);
}

function noSpace(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT' ? new MoatError(507, 'InsufficientStorage', 'no space left in the image store') : err;
}

async function exists(p: string) {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

async function treeSize(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += (await lstat(join(e.parentPath, e.name))).size;
  }
  return n;
}

/** `fn` over `items`, `limit` at a time; the first failure aborts `failed` and stops taking new items. */
async function mapLimit<T, R>(items: T[], limit: number, failed: AbortController, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length && !failed.signal.aborted) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (err) {
        failed.abort();
        throw err;
      }
    }
  };
  // Settled, not raced: every worker has cleaned up after itself before the error is seen.
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  if (errors.length) throw errors.find((e) => (e as Error).name !== 'AbortError') ?? errors[0];
  return out;
}
