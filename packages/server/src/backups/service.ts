import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rename, rm, stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MoatError, assertName, badRequest, conflict, notFound, type Sandbox } from '@moat/core';
import { run } from '@moat/runtime';
import type { Logger } from 'pino';
import type { SandboxController } from '../controllers/sandboxes.js';
import { crashPoint } from '../faults.js';
import type { BackupTable, VolumeTable } from '../store/schema.js';
import type { Store } from '../store/store.js';
import type { VolumeInfo, VolumeService } from '../volumes/service.js';
import type { ObjectStore } from './store.js';

export interface BackupInfo {
  namespace: string;
  id: string;
  volume: string;
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

/** Where a runc or gVisor sandbox's /data is mounted on the host. */
export type HostMounts = (runtime: string, sandboxUid: string) => string | undefined;

/**
 * Snapshots of named volumes into an object store: consistent (the
 * filesystem frozen while it is read: on the host for runc and gVisor, in
 * the guest for a microVM), zstd-compressed, SHA-256 checksummed, written
 * atomically. A restore makes a new volume from a backup after checking it.
 */
export class BackupService {
  private constructor(
    private readonly store: Store,
    private readonly volumes: VolumeService,
    private readonly sandboxes: SandboxController,
    readonly objects: ObjectStore,
    private readonly hostMount: HostMounts,
    private readonly log: Logger,
  ) {}

  static async open(store: Store, volumes: VolumeService, sandboxes: SandboxController, objects: ObjectStore, hostMount: HostMounts, log: Logger): Promise<BackupService> {
    await objects.cleanup();
    const s = new BackupService(store, volumes, sandboxes, objects, hostMount, log);
    await s.thawLeftovers();
    await s.dropIncomplete();
    return s;
  }

  /** Backups a crash cut short, being written or deleted: their objects and records go. */
  private async dropIncomplete(): Promise<void> {
    for (const r of await this.store.db.selectFrom('backups').selectAll().where('complete', '=', 0).execute()) {
      this.log.warn({ backup: r.id }, 'removing a backup a crash cut short');
      await this.objects.delete(r.key);
      await this.store.db.deleteFrom('backups').where('id', '=', r.id).execute();
    }
  }

  async list(namespace: string, volume?: string): Promise<BackupInfo[]> {
    let q = this.store.db.selectFrom('backups').selectAll().where('namespace', '=', namespace).where('complete', '=', 1);
    if (volume) q = q.where('volume', '=', volume);
    return (await q.orderBy('created_at').execute()).map(info);
  }

  async get(namespace: string, id: string): Promise<BackupInfo> {
    return info(await this.row(namespace, id));
  }

  private async row(namespace: string, id: string): Promise<BackupTable> {
    const r = await this.store.db.selectFrom('backups').selectAll().where('namespace', '=', namespace).where('id', '=', assertBackupId(id)).where('complete', '=', 1).executeTakeFirst();
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

  async create(namespace: string, volume: string): Promise<BackupInfo> {
    const first = await this.volumes.row(namespace, volume);
    return this.volumes.locks.run(first.uid, async () => {
      const v = await this.store.db.selectFrom('volumes').selectAll().where('uid', '=', first.uid).executeTakeFirst();
      if (!v) throw notFound(`volume "${volume}" not found in namespace "${namespace}"`, { kind: 'volumes', name: volume });
      const id = `bk-${randomBytes(8).toString('hex')}`;
      const started = Date.now();
      // The record comes first, incomplete, so an object written before a crash always has one (see dropIncomplete).
      const row: BackupTable = {
        id,
        namespace,
        volume: v.name,
        volume_uid: v.uid,
        size_bytes: v.size_bytes,
        compressed_bytes: 0,
        sha256: '',
        store: this.objects.name,
        key: `${namespace}/${id}.img.zst`,
        created_at: new Date().toISOString(),
        complete: 0,
      };
      await this.store.db.insertInto('backups').values(row).execute();
      try {
        const { sha256, bytes } = await this.consistent(v, () => this.upload(this.volumes.path(v.uid), row.key));
        crashPoint('backup.stored');
        Object.assign(row, { sha256, compressed_bytes: bytes, complete: 1 });
        await this.store.db.updateTable('backups').set({ sha256, compressed_bytes: bytes, complete: 1 }).where('id', '=', id).execute();
      } catch (err) {
        await this.objects.delete(row.key).catch(() => {});
        await this.store.db.deleteFrom('backups').where('id', '=', id).execute();
        throw err;
      }
      return { ...info(row), durationMs: Date.now() - started };
    });
  }

  async delete(namespace: string, id: string): Promise<void> {
    const r = await this.row(namespace, id);
    await this.store.db.updateTable('backups').set({ complete: 0 }).where('id', '=', r.id).execute(); // finished at the next start if a crash comes first
    await this.objects.delete(r.key);
    await this.store.db.deleteFrom('backups').where('id', '=', r.id).execute();
  }

  /** A new volume from a backup: the object is checked against its SHA-256 before the volume exists. */
  async restore(namespace: string, id: string, volume: string): Promise<VolumeInfo & { durationMs: number }> {
    const r = await this.row(namespace, id);
    assertName(volume, 'volume');
    if (r.store !== this.objects.name) throw conflict(`backup "${id}" is in ${r.store}, but this server's backup store is ${this.objects.name}`);
    const started = Date.now();
    const made = await this.volumes.createFrom(namespace, volume, r.size_bytes, async (path) => {
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
          if (err instanceof MoatError && err.reason === 'BackupFailed') throw new MoatError(422, 'ChecksumMismatch', `backup "${id}" is corrupt in ${r.store}: ${err.message}; nothing was restored`);
          throw err;
        });
        const got = hash.digest('hex');
        if (got !== r.sha256) throw new MoatError(422, 'ChecksumMismatch', `backup "${id}" is corrupt in ${r.store}: SHA-256 ${got}, expected ${r.sha256}; nothing was restored`);
        const size = (await stat(tmp)).size;
        if (size !== r.size_bytes) throw new MoatError(422, 'ChecksumMismatch', `backup "${id}" restored to ${size} bytes, expected ${r.size_bytes}; nothing was restored`);
        crashPoint('restore.written');
        await rename(tmp, path);
      } finally {
        await rm(tmp, { force: true });
      }
    });
    return { ...made, durationMs: Date.now() - started };
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
   * Runs `copy` while nothing can change the volume: an unattached volume
   * needs nothing; a runc or gVisor sandbox's mount is frozen on the host
   * (after a sync inside, which flushes gVisor's own cache); a microVM's is
   * synced and frozen inside the guest, whose page cache the host cannot see.
   */
  private async consistent<T>(v: VolumeTable, copy: () => Promise<T>): Promise<T> {
    if (!v.sandbox_uid) return copy();
    const found = await this.store.getSandboxByUid(v.sandbox_uid);
    if (!found) return copy();
    const s = found.sandbox;
    const phase = s.status.phase;
    const runtime = s.status.runtimeClassName ?? 'runc';
    if (phase === 'Pending') throw conflict(`volume "${v.name}" is attached to sandbox "${s.metadata.name}", which is starting: back it up once it is Running`);
    if (phase === 'Failed') return copy(); // its host state is gone: nothing mounts the image
    if (runtime === 'microvm') {
      if (phase !== 'Running') throw conflict(`volume "${v.name}" is attached to microVM sandbox "${s.metadata.name}", which is ${phase}: resume it to back it up (its guest's cache must be flushed)`);
      const at = mountPathOf(s);
      await this.guest(s, ['/bin/sh', '-c', 'sync && fsfreeze -f "$1"', 'sh', at], 'freeze');
      try {
        return await copy();
      } finally {
        await this.guest(s, ['/bin/sh', '-c', 'fsfreeze -u "$1"', 'sh', at], 'thaw').catch((err: unknown) => this.log.error({ err, sandbox: s.metadata.name }, 'could not thaw a microVM volume'));
      }
    }
    const mount = this.hostMount(runtime, s.metadata.uid);
    if (!mount || !(await isMountPoint(mount))) return copy();
    if (phase === 'Running') await this.guest(s, ['sync'], 'sync').catch(() => {}); // best effort: gVisor's cache
    await run('fsfreeze', ['-f', mount]);
    try {
      return await copy();
    } finally {
      await run('fsfreeze', ['-u', mount], { allowFail: true });
    }
  }

  private async guest(s: Sandbox, command: string[], what: string): Promise<void> {
    const agent = this.sandboxes.driverFor(s).agent(s.metadata.uid);
    let err = '';
    const { exitCode } = await agent.exec({ command }, { onStderr: (b: Buffer) => (err += b.toString()) }).done;
    if (exitCode !== 0) throw new MoatError(500, 'BackupFailed', `could not ${what} the volume inside sandbox "${s.metadata.name}" (exit ${exitCode}): ${err.trim()}`);
  }

  /** A crash between freeze and thaw would leave a sandbox's /data frozen: thaw every attached volume's mount on start-up. */
  private async thawLeftovers(): Promise<void> {
    const rows = await this.store.db.selectFrom('volumes').select('sandbox_uid').where('sandbox_uid', 'is not', null).execute();
    for (const r of rows) {
      const s = await this.store.getSandboxByUid(r.sandbox_uid!);
      if (!s) continue;
      const runtime = s.sandbox.status.runtimeClassName ?? 'runc';
      const mount = this.hostMount(runtime, r.sandbox_uid!);
      if (mount && (await isMountPoint(mount))) await run('fsfreeze', ['-u', mount], { allowFail: true });
      if (runtime === 'microvm' && s.sandbox.status.phase === 'Running') {
        // MicroVMs outlive the control plane: thaw inside (an error when it was not frozen is expected), bounded.
        const thaw = this.guest(s.sandbox, ['/bin/sh', '-c', 'fsfreeze -u "$1" 2>/dev/null; true', 'sh', mountPathOf(s.sandbox)], 'thaw').catch(() => {});
        await Promise.race([thaw, new Promise((res) => setTimeout(res, 5000).unref())]);
      }
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

async function isMountPoint(p: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const un = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text.split('\n').some((l) => un(l.split(' ')[4] ?? '') === p);
}

const info = (r: BackupTable): BackupInfo => ({
  namespace: r.namespace,
  id: r.id,
  volume: r.volume,
  sizeBytes: r.size_bytes,
  compressedBytes: r.compressed_bytes,
  sha256: r.sha256,
  store: r.store,
  key: r.key,
  createdAt: r.created_at,
});

