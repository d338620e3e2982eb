import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MoatError, assertName, badRequest, conflict, notFound, type Sandbox, type SandboxSpec } from '@moat/core';
import { QuiesceError, type DiskKind, type QuiesceContext, type RuntimeDriver } from '@moat/runtime';
import type { Logger } from 'pino';
import { crashPoint } from '../faults.js';
import type { BackupTable, VolumeTable } from '../store/schema.js';
import type { Store, StoredSandbox } from '../store/store.js';
import type { VolumeInfo, VolumeService } from '../volumes/service.js';
import type { ObjectStore } from './store.js';

export interface BackupInfo {
  namespace: string;
  id: string;
  /** `volume`: a named volume; `rootfs`: a sandbox's writable layer (what it changed on top of its image). */
  kind: 'volume' | 'rootfs';
  /** kind volume: the volume backed up. */
  volume?: string;
  /** kind rootfs: the sandbox backed up, its runtime class and the digest of its image (a restore runs the same). */
  sandbox?: string;
  runtimeClassName?: string;
  imageDigest?: string;
  sizeBytes: number;
  compressedBytes: number;
  /** SHA-256 of the stored object; checked before a restore uses it. */
  sha256: string;
  store: string;
  key: string;
  createdAt: string;
  /** Wall time of the backup, when just made. */
  durationMs?: number;
}

/** Backup ids are made here (`bk-` + 16 hex) and checked on the way in, so none names a path. */
export function assertBackupId(id: string): string {
  if (!/^bk-[0-9a-f]{16}$/.test(id)) throw badRequest(`invalid backup id "${id}": backup ids look like bk-0123456789abcdef`);
  return id;
}

/**
 * What backups need of sandboxes: host disks and the drivers that hold them still (the local backend's sandbox
 * controller, so backups of writable layers are a capability of that backend: `layerBackups`).
 */
export interface BackupSandboxes {
  get(namespace: string, name: string): Promise<StoredSandbox>;
  /** Runs `act` under the sandbox's lock: nothing else changes it meanwhile. */
  exclusive<T>(namespace: string, name: string, verb: string, act: (s: Sandbox) => Promise<T>): Promise<T>;
  driverFor(s: Sandbox): Pick<RuntimeDriver, 'writableLayer' | 'quiesce'>;
  /** A new sandbox on `restore.imageDigest`, whose writable layer `restore.disk` writes before anything is stored. */
  create(
    namespace: string,
    input: { metadata: { name: string }; spec: SandboxSpec },
    opts: { restore: { imageDigest: string; disk: (path: string) => Promise<void> } },
  ): Promise<Sandbox>;
}

/** The drivers by runtime class, for the thaw after a crash. */
export interface BackupDrivers {
  get(name: string): Pick<RuntimeDriver, 'thaw'> | undefined;
}

/**
 * Snapshots of named volumes into an object store: consistent (the sandbox's
 * driver holds the filesystem still while it is read: see `quiesce`),
 * zstd-compressed, SHA-256 checksummed, written atomically. A restore makes a
 * new volume from a backup after checking it.
 */
export class BackupService {
  private constructor(
    private readonly store: Store,
    private readonly volumes: VolumeService,
    private readonly sandboxes: BackupSandboxes,
    private readonly drivers: BackupDrivers,
    readonly objects: ObjectStore,
    private readonly log: Logger,
  ) {}

  static async open(
    store: Store,
    volumes: VolumeService,
    sandboxes: BackupSandboxes,
    drivers: BackupDrivers,
    objects: ObjectStore,
    log: Logger,
  ): Promise<BackupService> {
    await objects.cleanup();
    const s = new BackupService(store, volumes, sandboxes, drivers, objects, log);
    await s.thawLeftovers();
    await s.dropIncomplete();
    return s;
  }

  /** Backups a crash cut short, being written or deleted: their objects and records go (and a writable layer frozen for one is thawed). */
  private async dropIncomplete(): Promise<void> {
    for (const r of await this.store.db.selectFrom('backups').selectAll().where('complete', '=', 0).execute()) {
      this.log.warn({ backup: r.id }, 'removing a backup a crash cut short');
      const source = r.kind === 'rootfs' && r.sandbox_uid ? await this.store.getSandboxByUid(r.sandbox_uid) : undefined;
      if (source) await this.thaw(source.sandbox, 'layer');
      await this.objects.delete(r.key);
      await this.store.db.deleteFrom('backups').where('id', '=', r.id).execute();
    }
  }

  /** Backups of the namespace, oldest first; `volume` keeps those of that volume only. */
  async list(namespace: string, volume?: string): Promise<BackupInfo[]> {
    let q = this.store.db.selectFrom('backups').selectAll().where('namespace', '=', namespace).where('complete', '=', 1);
    if (volume) q = q.where('kind', '=', 'volume').where('volume', '=', volume);
    return (await q.orderBy('created_at').execute()).map(info);
  }

  async get(namespace: string, id: string): Promise<BackupInfo> {
    return info(await this.row(namespace, id));
  }

  private async row(namespace: string, id: string): Promise<BackupTable> {
    const r = await this.store.db
      .selectFrom('backups')
      .selectAll()
      .where('namespace', '=', namespace)
      .where('id', '=', assertBackupId(id))
      .where('complete', '=', 1)
      .executeTakeFirst();
    if (!r) throw notFound(`backup "${id}" not found in namespace "${namespace}"`, { kind: 'backups', name: id });
    return r;
  }

  /** The volume of a sandbox, for `moat backup create --sandbox`. */
  async volumeOfSandbox(namespace: string, sandbox: string): Promise<string> {
    const s = await this.sandboxes.get(namespace, sandbox);
    const v = await this.volumes.forSandbox(s.sandbox.metadata.uid);
    if (!v) throw conflict(`sandbox "${sandbox}" has no named volume: only volumes (volumeClaimTemplates or spec.podTemplate.spec.volumes) are backed up`);
    return v.name;
  }

  /**
   * A new backup's record. It is stored first, incomplete, so an object written before a crash always has one
   * (see dropIncomplete), and completed once its object is stored.
   */
  private newRow(
    namespace: string,
    sizeBytes: number,
    source: Pick<BackupTable, 'kind' | 'volume' | 'volume_uid' | 'sandbox' | 'sandbox_uid' | 'spec' | 'image_digest'>,
  ): BackupTable {
    const id = `bk-${randomBytes(8).toString('hex')}`;
    return {
      id,
      namespace,
      size_bytes: sizeBytes,
      compressed_bytes: 0,
      sha256: '',
      store: this.objects.name,
      key: `${namespace}/${id}.img.zst`,
      created_at: new Date().toISOString(),
      complete: 0,
      ...source,
    };
  }

  async create(namespace: string, volume: string): Promise<BackupInfo> {
    const first = await this.volumes.row(namespace, volume);
    return this.volumes.locks.run(first.uid, async () => {
      const v = await this.store.db.selectFrom('volumes').selectAll().where('uid', '=', first.uid).executeTakeFirst();
      if (!v) throw notFound(`volume "${volume}" not found in namespace "${namespace}"`, { kind: 'volumes', name: volume });
      const started = Date.now();
      const row = this.newRow(namespace, v.size_bytes, {
        kind: 'volume',
        volume: v.name,
        volume_uid: v.uid,
        sandbox: null,
        sandbox_uid: null,
        spec: null,
        image_digest: null,
      });
      return { ...(await this.record(row, () => this.consistent(v, () => this.upload(this.volumes.path(v.uid), row.key)))), durationMs: Date.now() - started };
    });
  }

  /**
   * A backup of a sandbox's writable layer (its `disk.img`: the overlay's upper layer, everything it changed
   * outside its volume), with its spec and image digest, taken while nothing can change it: under the
   * sandbox's lock (no pause, hibernate or delete meanwhile), held still by its driver (see quiesced).
   */
  async createRootfs(namespace: string, sandbox: string): Promise<BackupInfo> {
    assertName(sandbox, 'sandbox');
    const first = (await this.sandboxes.get(namespace, sandbox)).sandbox;
    if (first.status.phase === 'Pending') throw conflict(`sandbox "${sandbox}" is starting: back up its writable layer once it is Running`);
    return this.sandboxes.exclusive(namespace, sandbox, 'backed up', async (s) => {
      const uid = s.metadata.uid;
      const phase = s.status.phase;
      if (phase === 'Pending' || phase === 'Failed' || phase === 'Terminating')
        throw conflict(`sandbox "${sandbox}" is ${phase}: only a Running, Paused or Hibernated sandbox's writable layer can be backed up`);
      const digest = s.status.image?.digest;
      if (!digest) throw conflict(`sandbox "${sandbox}" has not started yet: it has no writable layer`);
      const { image } = this.sandboxes.driverFor(s).writableLayer(uid);
      const size = await stat(image).then(
        (x) => x.size,
        () => undefined,
      );
      if (size === undefined) throw conflict(`sandbox "${sandbox}" has no writable layer on this host`);
      const started = Date.now();
      const row = this.newRow(namespace, size, {
        kind: 'rootfs',
        volume: '',
        volume_uid: '',
        sandbox: s.metadata.name,
        sandbox_uid: uid,
        spec: JSON.stringify(s.spec),
        image_digest: digest,
      });
      return {
        ...(await this.record(row, () => this.quiesced(s, 'layer', () => this.upload(image, row.key), `sandbox "${sandbox}" is ${phase}`))),
        durationMs: Date.now() - started,
      };
    });
  }

  /** The record first, incomplete, so an object written before a crash always has one (see dropIncomplete); complete once stored. */
  private async record(row: BackupTable, write: () => Promise<{ sha256: string; bytes: number }>): Promise<BackupInfo> {
    await this.store.db.insertInto('backups').values(row).execute();
    try {
      const { sha256, bytes } = await write();
      crashPoint('backup.stored');
      Object.assign(row, { sha256, compressed_bytes: bytes, complete: 1 });
      await this.store.db.updateTable('backups').set({ sha256, compressed_bytes: bytes, complete: 1 }).where('id', '=', row.id).execute();
    } catch (err) {
      await this.objects.delete(row.key).catch(() => {});
      await this.store.db.deleteFrom('backups').where('id', '=', row.id).execute();
      throw err;
    }
    return info(row);
  }

  async delete(namespace: string, id: string): Promise<void> {
    const r = await this.row(namespace, id);
    await this.store.db.updateTable('backups').set({ complete: 0 }).where('id', '=', r.id).execute(); // finished at the next start if a crash comes first
    await this.objects.delete(r.key);
    await this.store.db.deleteFrom('backups').where('id', '=', r.id).execute();
  }

  /** A new volume from a volume backup: the object is checked against its SHA-256 before the volume exists. */
  async restore(namespace: string, id: string, volume: string): Promise<VolumeInfo & { durationMs: number }> {
    const r = await this.row(namespace, id);
    assertName(volume, 'volume');
    if (r.kind !== 'volume')
      throw badRequest(
        `backup "${id}" is of sandbox "${r.sandbox}"'s writable layer (kind rootfs), not of a volume: restore it into a new sandbox with {"sandbox": NAME}`,
      );
    this.sameStore(r);
    const started = Date.now();
    const made = await this.volumes.createFrom(namespace, volume, r.size_bytes, (path) => this.fetchVerified(r, path));
    return { ...made, durationMs: Date.now() - started };
  }

  /**
   * A new sandbox from a writable-layer backup: the source's spec (its name replaced; a shutdownTime already
   * past dropped), its image by digest, and the restored layer as its `disk.img`. The object is checked
   * against its SHA-256 before anything is made; then the sandbox goes the way of any create (quotas, start).
   */
  async restoreSandbox(namespace: string, id: string, sandbox: string): Promise<Sandbox> {
    const r = await this.row(namespace, id);
    assertName(sandbox, 'sandbox');
    if (r.kind !== 'rootfs')
      throw badRequest(`backup "${id}" is of volume "${r.volume}", not of a sandbox's writable layer: restore it into a new volume with {"volume": NAME}`);
    this.sameStore(r);
    const spec = JSON.parse(r.spec!) as SandboxSpec;
    if (spec.shutdownTime && Date.parse(spec.shutdownTime) <= Date.now()) delete spec.shutdownTime;
    return this.sandboxes.create(
      namespace,
      { metadata: { name: sandbox }, spec },
      {
        restore: {
          imageDigest: r.image_digest!,
          disk: async (path) => {
            await mkdir(dirname(path), { recursive: true, mode: 0o700 });
            await this.fetchVerified(r, path);
            await chmod(path, 0o600);
          },
        },
      },
    );
  }

  private sameStore(r: BackupTable): void {
    if (r.store !== this.objects.name) throw conflict(`backup "${r.id}" is in ${r.store}, but this server's backup store is ${this.objects.name}`);
  }

  /** Decompresses the backup's object to `path` (through a temporary file): only once its SHA-256, and its size, match. */
  private async fetchVerified(r: BackupTable, path: string): Promise<void> {
    const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      const hash = createHash('sha256');
      const tap = new Transform({
        transform(chunk: Buffer, _e, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      // --sparse: the zeros of the image's unused blocks stay holes.
      await zstd(['-d', '-q', '-f', '--sparse', '-o', tmp], { stdin: [await this.objects.get(r.key), tap] }).catch((err: unknown) => {
        // zstd's own frame checksums can catch a damaged object before the SHA-256 is complete.
        if (err instanceof MoatError && err.reason === 'BackupFailed')
          throw new MoatError(422, 'ChecksumMismatch', `backup "${r.id}" is corrupt in ${r.store}: ${err.message}; nothing was restored`);
        throw err;
      });
      const got = hash.digest('hex');
      if (got !== r.sha256)
        throw new MoatError(422, 'ChecksumMismatch', `backup "${r.id}" is corrupt in ${r.store}: SHA-256 ${got}, expected ${r.sha256}; nothing was restored`);
      const size = (await stat(tmp)).size;
      if (size !== r.size_bytes)
        throw new MoatError(422, 'ChecksumMismatch', `backup "${r.id}" restored to ${size} bytes, expected ${r.size_bytes}; nothing was restored`);
      crashPoint('restore.written');
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** zstd the image into the store, hashing what is stored. */
  private async upload(image: string, key: string): Promise<{ sha256: string; bytes: number }> {
    const hash = createHash('sha256');
    let bytes = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _e, cb) {
        if (bytes === 0) crashPoint('backup.writing'); // mid-object, and frozen when the volume is attached
        hash.update(chunk);
        bytes += chunk.length;
        cb(null, chunk);
      },
    });
    // -T0: every core; level 3 is zstd's default, fast enough to keep up with a disk.
    await zstd(['-q', '-c', '-3', '-T0', '--', image], { stdout: tap, also: this.objects.put(key, tap) });
    return { sha256: hash.digest('hex'), bytes };
  }

  /**
   * Runs `copy` while nothing can change the volume: an unattached volume needs nothing, an attached one is
   * held still by its sandbox's driver.
   */
  private async consistent<T>(v: VolumeTable, copy: () => Promise<T>): Promise<T> {
    if (!v.sandbox_uid) return copy();
    const found = await this.store.getSandboxByUid(v.sandbox_uid);
    if (!found) return copy();
    const s = found.sandbox;
    const phase = s.status.phase;
    if (phase === 'Pending') throw conflict(`volume "${v.name}" is attached to sandbox "${s.metadata.name}", which is starting: back it up once it is Running`);
    if (phase === 'Failed') return copy(); // its host state is gone: nothing mounts the image
    return this.quiesced(s, 'data', copy, `volume "${v.name}" is attached to sandbox "${s.metadata.name}", which is ${phase}`);
  }

  /**
   * Runs `copy` while the sandbox's driver holds the disk still (the caller holds the sandbox's or the
   * volume's lock). The driver's refusal is a 409 that begins with `refused` (what, in which phase); its failure is a BackupFailed.
   */
  private async quiesced<T>(s: Sandbox, what: DiskKind, copy: () => Promise<T>, refused: string): Promise<T> {
    try {
      return await this.sandboxes.driverFor(s).quiesce(s.metadata.uid, what, copy, this.quiesceContext(s));
    } catch (err) {
      if (!(err instanceof QuiesceError)) throw err;
      if (err.refused) throw conflict(`${refused}: ${err.message}`);
      throw new MoatError(500, 'BackupFailed', `sandbox "${s.metadata.name}": ${err.message}`);
    }
  }

  private quiesceContext(s: Sandbox): QuiesceContext {
    return {
      running: s.status.phase === 'Running',
      dataMountPath: mountPathOf(s),
      warn: (err, message) => this.log.error({ err, sandbox: s.metadata.name }, message),
    };
  }

  /** A sandbox held still for a copy when a crash came: its driver lets it go on (one not working here is skipped: recovery refuses its sandboxes anyway). */
  private async thaw(s: Sandbox, what: DiskKind): Promise<void> {
    await this.drivers.get(s.status.runtimeClassName ?? 'runc')?.thaw(s.metadata.uid, what, this.quiesceContext(s));
  }

  /** A crash between freeze and thaw would leave a sandbox's /data frozen: thaw every attached volume on start-up. */
  private async thawLeftovers(): Promise<void> {
    const rows = await this.store.db.selectFrom('volumes').select('sandbox_uid').where('sandbox_uid', 'is not', null).execute();
    for (const r of rows) {
      const s = await this.store.getSandboxByUid(r.sandbox_uid!);
      if (s) await this.thaw(s.sandbox, 'data');
    }
  }
}

function mountPathOf(s: Sandbox): string {
  return s.spec.podTemplate.spec.containers[0]!.volumeMounts?.[0]?.mountPath ?? '/data';
}

/**
 * Runs zstd: `stdin` streams piped into it, its stdout into `stdout`. If
 * anything fails (the store is full), zstd is killed and the error thrown.
 */
async function zstd(args: string[], io: { stdin?: NodeJS.ReadableStream[]; stdout?: NodeJS.WritableStream; also?: Promise<unknown> }): Promise<void> {
  const child = spawn('zstd', args, { stdio: [io.stdin ? 'pipe' : 'ignore', io.stdout ? 'pipe' : 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number>((res, rej) => {
    child.on('error', rej);
    child.on('close', (code) => res(code ?? 1));
  });
  const flows: Promise<unknown>[] = [];
  if (io.stdin) flows.push(pipeline([...io.stdin, child.stdin!]));
  // Piped, not a pipeline: the consumer (the store's own pipeline, in `also`) owns the stream's end.
  if (io.stdout) child.stdout!.pipe(io.stdout);
  if (io.also) flows.push(io.also);
  try {
    await Promise.all(flows);
  } catch (err) {
    child.kill('SIGKILL');
    await exited.catch(() => {});
    // The store's own error (no space) says more than the broken pipe it caused.
    const settled = await Promise.allSettled(flows);
    const last = settled[settled.length - 1]!;
    throw io.also && last.status === 'rejected' ? last.reason : err;
  }
  const code = await exited;
  if (code !== 0) throw new MoatError(500, 'BackupFailed', `zstd failed (exit ${code}): ${stderr.trim()}`);
}

const info = (r: BackupTable): BackupInfo => ({
  namespace: r.namespace,
  id: r.id,
  kind: r.kind,
  ...(r.kind === 'rootfs'
    ? { sandbox: r.sandbox!, runtimeClassName: (JSON.parse(r.spec!) as SandboxSpec).podTemplate.spec.runtimeClassName ?? 'runc', imageDigest: r.image_digest! }
    : { volume: r.volume }),
  sizeBytes: r.size_bytes,
  compressedBytes: r.compressed_bytes,
  sha256: r.sha256,
  store: r.store,
  key: r.key,
  createdAt: r.created_at,
});
