import SQLite from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect, type Dialect, type MigrationProvider } from 'kysely';
import type { ExtensionKind, ObjectMeta, Sandbox, SandboxSpec, SandboxStatus } from '@moat/core';
import { Serial } from '../util/serial.js';
import { migrations, type SqlDialect } from './migrations.js';
import { connectPostgres, isPostgresUrl, type Postgres } from './postgres.js';
import type { ApiKeyTable, Database, ObjectTable, SandboxTable } from './schema.js';

/** What a sandbox should be (agent-sandbox's operatingMode, plus Deleted for a delete in progress). */
export type Desired = 'Running' | 'Paused' | 'Hibernated' | 'Deleted';
/** Not being deleted: any desire but Deleted. */
export const isLive = (d: Desired) => d !== 'Deleted';
export interface StoredSandbox {
  sandbox: Sandbox;
  desired: Desired;
}

/** A template, claim or pool as stored; the controllers give it its kind-specific type. */
export interface StoredObject {
  kind: ExtensionKind;
  metadata: ObjectMeta;
  spec: unknown;
  status: unknown;
}

export interface SandboxEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
  time: string;
}

/**
 * Desired and observed state. SQLite (WAL) embedded by default, for one
 * server; PostgreSQL (a postgres:// URL) for replicas sharing one database.
 * The queries are plain Kysely and mean the same on both (docs/database.md).
 */
export class Store {
  private readonly serial = new Serial();

  private constructor(
    readonly db: Kysely<Database>,
    readonly dialect: SqlDialect,
    private readonly pg: Postgres | undefined,
  ) {}

  /** A SQLite file (or `:memory:`), or a `postgres://` / `postgresql://` URL; migrated to the latest schema. */
  static async open(target: string): Promise<Store> {
    const pg = isPostgresUrl(target) ? await connectPostgres(target) : undefined;
    const dialect: SqlDialect = pg ? 'postgres' : 'sqlite';
    const db = new Kysely<Database>({ dialect: pg?.dialect ?? sqliteDialect(target) });
    // On PostgreSQL the Migrator holds an advisory lock and migrates in one transaction: replicas starting
    // together migrate once, the others wait and find nothing left to do.
    const provider: MigrationProvider = { getMigrations: async () => migrations(dialect) };
    const { error } = await new Migrator({ db, provider }).migrateToLatest();
    if (error) {
      await db.destroy();
      await pg?.close();
      throw error;
    }
    return new Store(db, dialect, pg);
  }

  async close() {
    await this.db.destroy();
    await this.pg?.close();
  }

  /**
   * Runs fn while no other call with this name runs, in this process or, on
   * PostgreSQL, in any replica sharing the database: for a read-modify-write
   * that one statement cannot express (the audit chain's next link, a quota
   * check and the insert it admits). fn must not take another one.
   */
  exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const pg = this.pg;
    return this.serial.run(name, pg ? () => pg.exclusive(name, fn) : fn);
  }

  // --- API keys

  insertKey(row: ApiKeyTable) {
    return this.db.insertInto('api_keys').values(row).execute();
  }

  keyByHash(hash: string) {
    return this.db.selectFrom('api_keys').selectAll().where('hash', '=', hash).executeTakeFirst();
  }

  // --- sandboxes

  async insertSandbox(s: Sandbox): Promise<void> {
    await this.db.insertInto('sandboxes').values(toRow(s, 'Running')).execute();
  }

  async getSandbox(namespace: string, name: string): Promise<StoredSandbox | undefined> {
    const row = await this.db.selectFrom('sandboxes').selectAll().where('namespace', '=', namespace).where('name', '=', name).executeTakeFirst();
    return row && fromRow(row);
  }

  async getSandboxByUid(uid: string): Promise<StoredSandbox | undefined> {
    const row = await this.db.selectFrom('sandboxes').selectAll().where('uid', '=', uid).executeTakeFirst();
    return row && fromRow(row);
  }

  async listSandboxes(namespace?: string): Promise<StoredSandbox[]> {
    let q = this.db.selectFrom('sandboxes').selectAll().orderBy('created_at').orderBy('name');
    if (namespace) q = q.where('namespace', '=', namespace);
    return (await q.execute()).map(fromRow);
  }

  /** Replace the status and bump resourceVersion; returns the updated sandbox. */
  async setStatus(uid: string, status: SandboxStatus): Promise<Sandbox | undefined> {
    const row = await this.updateStatus('sandboxes', uid, status);
    return row && fromRow(row as SandboxTable).sandbox;
  }

  /**
   * Hand a pooled sandbox to its claimer: rename it and give it the claim's
   * metadata and spec, only if it is still the unclaimed pool member `from`
   * (so two claims can never get the same sandbox).
   */
  async adoptSandbox(
    uid: string,
    from: string,
    to: { name: string; labels: Record<string, string>; annotations: Record<string, string>; spec: SandboxSpec },
  ): Promise<Sandbox | undefined> {
    const row = await this.db
      .updateTable('sandboxes')
      .set((eb) => ({
        name: to.name,
        labels: JSON.stringify(to.labels),
        annotations: JSON.stringify(to.annotations),
        spec: JSON.stringify(to.spec),
        resource_version: eb('resource_version', '+', 1),
      }))
      .where('uid', '=', uid)
      .where('name', '=', from)
      .where('desired', '=', 'Running') // a pool member never pauses; one being deleted is not taken
      .returningAll()
      .executeTakeFirst();
    return row && fromRow(row).sandbox;
  }

  /**
   * Change the spec (shutdownTime after an extend) and bump resourceVersion.
   * Optimistic: a concurrent change (an adoption) makes it read and apply again.
   */
  async updateSandboxSpec(uid: string, change: (spec: SandboxSpec) => SandboxSpec): Promise<Sandbox | undefined> {
    for (;;) {
      const current = await this.db.selectFrom('sandboxes').select(['spec', 'resource_version']).where('uid', '=', uid).executeTakeFirst();
      if (!current) return undefined;
      const row = await this.db
        .updateTable('sandboxes')
        .set({ spec: JSON.stringify(change(JSON.parse(current.spec) as SandboxSpec)), resource_version: current.resource_version + 1 })
        .where('uid', '=', uid)
        .where('resource_version', '=', current.resource_version)
        .returningAll()
        .executeTakeFirst();
      if (row) return fromRow(row).sandbox;
    }
  }

  async setDesired(uid: string, desired: Desired): Promise<void> {
    await this.db.updateTable('sandboxes').set({ desired }).where('uid', '=', uid).execute();
  }

  async deleteSandbox(uid: string): Promise<void> {
    await this.db.deleteFrom('sandboxes').where('uid', '=', uid).execute();
    await this.db.deleteFrom('events').where('sandbox_uid', '=', uid).execute();
  }

  // --- templates, claims and pools

  async insertObject(o: StoredObject): Promise<void> {
    const m = o.metadata;
    await this.db
      .insertInto('objects')
      .values({
        uid: m.uid,
        kind: o.kind,
        namespace: m.namespace,
        name: m.name,
        labels: JSON.stringify(m.labels ?? {}),
        annotations: JSON.stringify(m.annotations ?? {}),
        spec: JSON.stringify(o.spec),
        status: JSON.stringify(o.status),
        generation: m.generation,
        resource_version: Number(m.resourceVersion),
        created_at: m.creationTimestamp,
      })
      .execute();
  }

  async getObject(kind: ExtensionKind, namespace: string, name: string): Promise<StoredObject | undefined> {
    const row = await this.db
      .selectFrom('objects')
      .selectAll()
      .where('kind', '=', kind)
      .where('namespace', '=', namespace)
      .where('name', '=', name)
      .executeTakeFirst();
    return row && objectFromRow(row);
  }

  async getObjectByUid(uid: string): Promise<StoredObject | undefined> {
    const row = await this.db.selectFrom('objects').selectAll().where('uid', '=', uid).executeTakeFirst();
    return row && objectFromRow(row);
  }

  async listObjects(kind: ExtensionKind, namespace?: string): Promise<StoredObject[]> {
    let q = this.db.selectFrom('objects').selectAll().where('kind', '=', kind).orderBy('created_at').orderBy('name');
    if (namespace) q = q.where('namespace', '=', namespace);
    return (await q.execute()).map(objectFromRow);
  }

  /** Replace metadata and spec (a spec change bumps generation). */
  async updateObject(
    uid: string,
    u: { spec: unknown; labels?: Record<string, string>; annotations?: Record<string, string> },
  ): Promise<StoredObject | undefined> {
    const spec = JSON.stringify(u.spec);
    const row = await this.db
      .updateTable('objects')
      .set((eb) => ({
        spec,
        labels: JSON.stringify(u.labels ?? {}),
        annotations: JSON.stringify(u.annotations ?? {}),
        // Compared with the stored spec in the statement itself, so two replicas updating at once both count.
        generation: eb
          .case()
          .when('spec', '=', spec)
          .then(eb.ref('generation'))
          .else(eb('generation', '+', 1))
          .end(),
        resource_version: eb('resource_version', '+', 1),
      }))
      .where('uid', '=', uid)
      .returningAll()
      .executeTakeFirst();
    return row && objectFromRow(row);
  }

  async setObjectStatus(uid: string, status: unknown): Promise<StoredObject | undefined> {
    const row = await this.updateStatus('objects', uid, status);
    return row && objectFromRow(row as ObjectTable);
  }

  private updateStatus(table: 'sandboxes' | 'objects', uid: string, status: unknown) {
    return this.db
      .updateTable(table)
      .set((eb) => ({ status: JSON.stringify(status), resource_version: eb('resource_version', '+', 1) }))
      .where('uid', '=', uid)
      .returningAll()
      .executeTakeFirst();
  }

  async deleteObject(uid: string): Promise<void> {
    await this.db.deleteFrom('objects').where('uid', '=', uid).execute();
  }

  // --- network leases and the egress log

  leases() {
    return this.db.selectFrom('network_leases').selectAll().execute();
  }

  /** False when the address is taken (another sandbox got it first). */
  async insertLease(address: string, sandboxUid: string): Promise<boolean> {
    const r = await this.db
      .insertInto('network_leases')
      .values({ address, sandbox_uid: sandboxUid })
      .onConflict((oc) => oc.doNothing())
      .executeTakeFirst();
    return Number(r.numInsertedOrUpdatedRows ?? 0) === 1;
  }

  async releaseLease(sandboxUid: string): Promise<void> {
    await this.db.deleteFrom('network_leases').where('sandbox_uid', '=', sandboxUid).execute();
  }

  // --- host id ranges

  idRanges() {
    return this.db.selectFrom('id_ranges').selectAll().execute();
  }

  /** False when the slot is taken (another sandbox got it first). */
  async insertIdRange(slot: number, sandboxUid: string): Promise<boolean> {
    const r = await this.db
      .insertInto('id_ranges')
      .values({ slot, sandbox_uid: sandboxUid })
      .onConflict((oc) => oc.doNothing())
      .executeTakeFirst();
    return Number(r.numInsertedOrUpdatedRows ?? 0) === 1;
  }

  async releaseIdRange(sandboxUid: string): Promise<void> {
    await this.db.deleteFrom('id_ranges').where('sandbox_uid', '=', sandboxUid).execute();
  }

  async addEgress(record: { time: string; sandbox?: { uid: string; name: string; namespace: string } }): Promise<void> {
    await this.db
      .insertInto('egress_log')
      .values({
        time: record.time,
        sandbox_uid: record.sandbox?.uid ?? null,
        namespace: record.sandbox?.namespace ?? null,
        name: record.sandbox?.name ?? null,
        record: JSON.stringify(record),
      })
      .execute();
  }

  /** Newest last; at most `limit` of the most recent. */
  async egressLog(sandboxUid: string, limit: number): Promise<unknown[]> {
    const rows = await this.db.selectFrom('egress_log').select(['record']).where('sandbox_uid', '=', sandboxUid).orderBy('id', 'desc').limit(limit).execute();
    return rows.reverse().map((r) => JSON.parse(r.record) as unknown);
  }

  // --- events

  async addEvent(s: Sandbox, e: Omit<SandboxEvent, 'time'>): Promise<void> {
    await this.db
      .insertInto('events')
      .values({ sandbox_uid: s.metadata.uid, namespace: s.metadata.namespace, name: s.metadata.name, ...e, time: new Date().toISOString() })
      .execute();
  }

  async events(uid: string): Promise<SandboxEvent[]> {
    const rows = await this.db.selectFrom('events').select(['type', 'reason', 'message', 'time']).where('sandbox_uid', '=', uid).orderBy('id').execute();
    return rows as SandboxEvent[];
  }
}

function sqliteDialect(file: string): Dialect {
  const sqlite = new SQLite(file);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('busy_timeout = 5000');
  return new SqliteDialect({ database: sqlite });
}

function toRow(s: Sandbox, desired: Desired): SandboxTable {
  return {
    uid: s.metadata.uid,
    namespace: s.metadata.namespace,
    name: s.metadata.name,
    labels: JSON.stringify(s.metadata.labels ?? {}),
    annotations: JSON.stringify(s.metadata.annotations ?? {}),
    spec: JSON.stringify(s.spec),
    status: JSON.stringify(s.status),
    desired,
    created_at: s.metadata.creationTimestamp,
    resource_version: Number(s.metadata.resourceVersion),
  };
}

function fromRow(r: SandboxTable): StoredSandbox {
  const labels = JSON.parse(r.labels) as Record<string, string>;
  const annotations = JSON.parse(r.annotations) as Record<string, string>;
  return {
    desired: r.desired as Desired,
    sandbox: {
      apiVersion: 'agents.x-k8s.io/v1alpha1',
      kind: 'Sandbox',
      metadata: {
        name: r.name,
        namespace: r.namespace,
        uid: r.uid,
        creationTimestamp: r.created_at,
        resourceVersion: String(r.resource_version),
        ...(Object.keys(labels).length ? { labels } : {}),
        ...(Object.keys(annotations).length ? { annotations } : {}),
      },
      spec: JSON.parse(r.spec),
      status: JSON.parse(r.status),
    },
  };
}

function objectFromRow(r: ObjectTable): StoredObject {
  const labels = JSON.parse(r.labels) as Record<string, string>;
  const annotations = JSON.parse(r.annotations) as Record<string, string>;
  return {
    kind: r.kind as ExtensionKind,
    metadata: {
      name: r.name,
      namespace: r.namespace,
      uid: r.uid,
      creationTimestamp: r.created_at,
      resourceVersion: String(r.resource_version),
      generation: r.generation,
      ...(Object.keys(labels).length ? { labels } : {}),
      ...(Object.keys(annotations).length ? { annotations } : {}),
    },
    spec: JSON.parse(r.spec),
    status: JSON.parse(r.status),
  };
}
