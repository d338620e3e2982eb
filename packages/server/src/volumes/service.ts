import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MoatError, alreadyExists, assertName, conflict, formatBytes, invalid, notFound, parseBytes, type Sandbox, type SandboxSpec } from '@moat/core';
import { createExt4, type SandboxAgent } from '@moat/runtime';
import { Serial } from '../util/serial.js';
import type { Quotas } from '../identity/quotas.js';
import { isUniqueViolation } from '../store/errors.js';
import type { VolumeTable } from '../store/schema.js';
import type { Store } from '../store/store.js';

export const MIN_VOLUME_BYTES = 16 * 2 ** 20;
/** The largest volume anyone may ask for: an ext4 image is sparse, but a typo should not make a petabyte. */
export const MAX_VOLUME_BYTES = 2 ** 40;

/** A volume as the API shows it. */
export interface VolumeInfo {
  namespace: string;
  name: string;
  uid: string;
  size: string;
  sizeBytes: number;
  createdAt: string;
  /** The sandbox it is attached to, if any. */
  sandbox: string | null;
  /** Whether it outlives the sandbox it is attached to. */
  retain: boolean;
}

/** Parses and bounds a volume size (`1Gi`, bytes). */
export function volumeSize(q: string | number, field = 'size'): number {
  const n = parseBytes(q, field);
  if (!Number.isFinite(n) || n < MIN_VOLUME_BYTES || n > MAX_VOLUME_BYTES) {
    throw invalid(`${field}: ${q} is outside the allowed range ${formatBytes(MIN_VOLUME_BYTES)}..${formatBytes(MAX_VOLUME_BYTES)}`, {
      field,
      min: MIN_VOLUME_BYTES,
      max: MAX_VOLUME_BYTES,
    });
  }
  return n;
}

/** `<template>-<sandbox>`; a name too long for a DNS label keeps its start and gets a hash of the whole, so it is still the same every time. */
export function templateVolumeName(template: string, sandbox: string): string {
  const full = `${template}-${sandbox}`;
  if (full.length <= 63) return assertName(full, `volume name "${full}" (volumeClaimTemplate + "-" + sandbox name)`);
  const hash = createHash('sha256').update(full).digest('hex').slice(0, 8);
  return assertName(`${full.slice(0, 54).replace(/-+$/, '')}-${hash}`, 'volume name');
}

/** Which named volume a sandbox spec uses, if any (the template's volume is named `<template>-<sandbox>`, as Kubernetes names PVCs). */
export function volumeOf(
  name: string,
  spec: SandboxSpec,
): { kind: 'template'; volume: string; sizeBytes: number; retain: boolean } | { kind: 'claim'; volume: string } | undefined {
  const claim = spec.podTemplate.spec.volumes?.[0]?.persistentVolumeClaim.claimName;
  if (claim) return { kind: 'claim', volume: claim };
  const t = spec.volumeClaimTemplates?.[0];
  if (!t) return undefined;
  return {
    kind: 'template',
    volume: templateVolumeName(t.metadata.name, name),
    sizeBytes: volumeSize(t.spec.resources.requests.storage, 'spec.volumeClaimTemplates[0].spec.resources.requests.storage'),
    retain: spec.persistentVolumeClaimRetentionPolicy?.whenDeleted === 'Retain',
  };
}

/**
 * Named volumes: ext4 images under `<dataDir>/volumes`, one record per
 * (namespace, name), attached to at most one sandbox (a unique index). The
 * image's size is a real limit (ENOSPC inside) and counts in the owner's
 * storage quota. Changes to one volume (attach, detach, delete, backup) are
 * serialised by its uid.
 */
export class VolumeService {
  readonly locks = new Serial();

  private constructor(
    private readonly store: Store,
    private readonly quotas: Quotas,
    readonly dir: string,
  ) {}

  static async open(store: Store, quotas: Quotas, dir: string): Promise<VolumeService> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Restores a crash cut short leave temporary images behind.
    for (const f of await readdir(dir)) if (f.includes('.tmp-')) await rm(join(dir, f), { force: true });
    const service = new VolumeService(store, quotas, dir);
    await service.reconcile();
    return service;
  }

  /** Attachments whose sandbox record is gone (a crash between the two): released as a teardown would. */
  private async reconcile(): Promise<void> {
    const rows = await this.store.db.selectFrom('volumes').selectAll().where('sandbox_uid', 'is not', null).execute();
    for (const r of rows) if (!(await this.store.getSandboxByUid(r.sandbox_uid!))) await this.release(r.sandbox_uid!);
    // An unattached volume without an image is a create or restore a crash cut short: it never held data.
    const free = await this.store.db.selectFrom('volumes').selectAll().where('sandbox_uid', 'is', null).execute();
    for (const r of free) if (!(await stat(this.path(r.uid)).catch(() => undefined))) await this.drop(r);
  }

  path(uid: string): string {
    return join(this.dir, `${uid}.img`);
  }

  async list(namespace: string): Promise<VolumeInfo[]> {
    const rows = await this.store.db.selectFrom('volumes').selectAll().where('namespace', '=', namespace).orderBy('name').execute();
    return Promise.all(rows.map((r) => this.info(r)));
  }

  async get(namespace: string, name: string): Promise<VolumeInfo> {
    return this.info(await this.row(namespace, name));
  }

  async row(namespace: string, name: string): Promise<VolumeTable> {
    const r = await this.store.db.selectFrom('volumes').selectAll().where('namespace', '=', namespace).where('name', '=', name).executeTakeFirst();
    if (!r) throw notFound(`volume "${name}" not found in namespace "${namespace}"`, { kind: 'volumes', name });
    return r;
  }

  /** Storage of a namespace's volumes, for quotas. */
  async bytesIn(namespaces: string[]): Promise<number> {
    if (!namespaces.length) return 0;
    const r = await this.store.db
      .selectFrom('volumes')
      .select((e) => e.fn.sum<number>('size_bytes').as('n'))
      .where('namespace', 'in', namespaces)
      .executeTakeFirst();
    return Number(r?.n ?? 0);
  }

  /** `moat volume create`: an empty ext4 volume, unattached, kept until deleted. */
  async create(namespace: string, name: string, sizeBytes: number): Promise<VolumeInfo> {
    assertName(name, 'volume name');
    const row = await this.insert(namespace, name, sizeBytes, { retain: true });
    try {
      // Root-owned: runc and gVisor give its root to the sandbox's root when they mount it.
      await createExt4(this.path(row.uid), sizeBytes, { journal: true, rootOwner: 0 });
    } catch (err) {
      await this.drop(row);
      throw err;
    }
    return this.info(row);
  }

  /**
   * A volume whose image the caller provides (a restore): the record is made
   * under the quota, then `fill` writes the image to the path given; a failed
   * fill leaves nothing behind.
   */
  async createFrom(namespace: string, name: string, sizeBytes: number, fill: (path: string) => Promise<void>): Promise<VolumeInfo> {
    assertName(name, 'volume name');
    const row = await this.insert(namespace, name, sizeBytes, { retain: true });
    try {
      await fill(this.path(row.uid));
    } catch (err) {
      await this.drop(row);
      throw err;
    }
    return this.info(row);
  }

  async delete(namespace: string, name: string): Promise<void> {
    const row = await this.row(namespace, name);
    await this.locks.run(row.uid, async () => {
      const now = await this.store.db.selectFrom('volumes').selectAll().where('uid', '=', row.uid).executeTakeFirst();
      if (!now) return;
      if (now.sandbox_uid) {
        const s = await this.store.getSandboxByUid(now.sandbox_uid);
        throw conflict(`volume "${name}" is attached to sandbox "${s?.sandbox.metadata.name ?? now.sandbox_uid}": delete the sandbox first`, {
          kind: 'volumes',
          name,
        });
      }
      await this.drop(now);
    });
  }

  /**
   * Attaches the sandbox's volume when it is created: a volumeClaimTemplate's
   * is made (or a retained one of the same name taken back, as a StatefulSet
   * does), a claimed one must exist and be free. 404/409 otherwise.
   */
  async bind(sandbox: Sandbox): Promise<void> {
    const { namespace, name, uid } = sandbox.metadata;
    const want = volumeOf(name, sandbox.spec);
    if (!want) return;
    const row = await this.store.db.selectFrom('volumes').selectAll().where('namespace', '=', namespace).where('name', '=', want.volume).executeTakeFirst();
    if (!row) {
      if (want.kind === 'claim')
        throw notFound(`volume "${want.volume}" not found in namespace "${namespace}": create it with \`moat volume create\``, {
          kind: 'volumes',
          name: want.volume,
        });
      // Its quota was counted with the sandbox's (identity/quotas.ts).
      await this.insert(namespace, want.volume, want.sizeBytes, { retain: want.retain, sandbox: uid, admitted: true });
      return;
    }
    const r = row;
    await this.locks.run(r.uid, async () => {
      // A claimed volume is never deleted with the sandbox; a template's follows the sandbox's retention policy.
      const retain = want.kind === 'claim' || want.retain ? 1 : 0;
      const res = await this.store.db
        .updateTable('volumes')
        .set({ sandbox_uid: uid, retain })
        .where('uid', '=', r.uid)
        .where('sandbox_uid', 'is', null)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) {
        const holder = await this.store.db.selectFrom('volumes').select('sandbox_uid').where('uid', '=', r.uid).executeTakeFirst();
        const s = holder?.sandbox_uid ? await this.store.getSandboxByUid(holder.sandbox_uid) : undefined;
        throw conflict(
          `volume "${want.volume}" is attached to sandbox "${s?.sandbox.metadata.name ?? holder?.sandbox_uid}": a volume is attached to one sandbox at a time`,
          { kind: 'volumes', name: want.volume },
        );
      }
    });
  }

  /** The image a sandbox's /data is, when it is a named volume. */
  async forSandbox(sandboxUid: string): Promise<{ path: string; sizeBytes: number; name: string } | undefined> {
    const r = await this.store.db.selectFrom('volumes').selectAll().where('sandbox_uid', '=', sandboxUid).executeTakeFirst();
    return r ? { path: this.path(r.uid), sizeBytes: r.size_bytes, name: r.name } : undefined;
  }

  /** `sync` inside a sandbox before it is destroyed, so a microVM's (or gVisor's) cached writes reach the image; bounded, errors ignored. */
  async flush(agent: SandboxAgent): Promise<void> {
    const h = agent.exec({ command: ['sync'] }, {});
    const timer = new Promise<void>((r) => setTimeout(r, 10_000).unref());
    await Promise.race([
      h.done.then(
        () => {},
        () => {},
      ),
      timer,
    ]);
  }

  /** After the sandbox's host state is gone: detach its volume, and delete it unless it is retained. */
  async release(sandboxUid: string): Promise<void> {
    const r = await this.store.db.selectFrom('volumes').selectAll().where('sandbox_uid', '=', sandboxUid).executeTakeFirst();
    if (!r) return;
    await this.locks.run(r.uid, async () => {
      if (r.retain) await this.store.db.updateTable('volumes').set({ sandbox_uid: null }).where('uid', '=', r.uid).execute();
      else await this.drop(r);
    });
  }

  private async insert(namespace: string, name: string, sizeBytes: number, o: { retain: boolean; sandbox?: string; admitted?: boolean }): Promise<VolumeTable> {
    const row: VolumeTable = {
      uid: randomUUID(),
      namespace,
      name,
      size_bytes: sizeBytes,
      created_at: new Date().toISOString(),
      sandbox_uid: o.sandbox ?? null,
      retain: o.retain ? 1 : 0,
    };
    const insert = async () => {
      try {
        await this.store.db.insertInto('volumes').values(row).execute();
      } catch (err) {
        if (isUniqueViolation(err)) throw alreadyExists(`volume "${name}" already exists in namespace "${namespace}"`, { kind: 'volumes', name });
        throw err;
      }
    };
    if (o.admitted) await insert();
    else await this.quotas.admitStorage(namespace, sizeBytes, `volume "${name}"`, insert);
    return row;
  }

  private async drop(r: VolumeTable): Promise<void> {
    await rm(this.path(r.uid), { force: true });
    await this.store.db.deleteFrom('volumes').where('uid', '=', r.uid).execute();
  }

  private async info(r: VolumeTable): Promise<VolumeInfo> {
    const s = r.sandbox_uid ? await this.store.getSandboxByUid(r.sandbox_uid) : undefined;
    return {
      namespace: r.namespace,
      name: r.name,
      uid: r.uid,
      size: formatBytes(r.size_bytes),
      sizeBytes: r.size_bytes,
      createdAt: r.created_at,
      sandbox: s?.sandbox.metadata.name ?? null,
      retain: r.retain === 1,
    };
  }
}

export const insufficientStorage = (msg: string) => new MoatError(507, 'InsufficientStorage', msg);
