import { sql, type ColumnDefinitionBuilder, type Expression, type Kysely, type Migration } from 'kysely';

export type SqlDialect = 'sqlite' | 'postgres';

/**
 * The column types whose spelling differs. SQLite keeps exactly what it always
 * had (an existing database's history must not change). PostgreSQL gets the
 * same meaning: SQLite's INTEGER is 64-bit, so bigint; an autoincrement id is
 * an identity column; text compares byte by byte (collation "C"), as SQLite
 * does, so orderings and ranges match whatever the database's locale.
 */
function columnTypes(dialect: SqlDialect) {
  const pg = dialect === 'postgres';
  return {
    text: pg ? (sql`text collate "C"` as Expression<unknown>) : 'text',
    int: pg ? 'bigint' : 'integer',
    autoId: (c: ColumnDefinitionBuilder) => (pg ? c.primaryKey().generatedByDefaultAsIdentity() : c.primaryKey().autoIncrement()),
  } as const;
}

/** Schema history. Append only: a released migration is never edited (its PostgreSQL spelling aside). */
export function migrations(dialect: SqlDialect): Record<string, Migration> {
  const t = columnTypes(dialect);
  return {
    '0001_core': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('api_keys')
          .addColumn('id', t.text, (c) => c.primaryKey())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('hash', t.text, (c) => c.notNull().unique())
          .addColumn('user', t.text, (c) => c.notNull())
          .addColumn('role', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('expires_at', t.text)
          .addColumn('revoked_at', t.text)
          .execute();
        await db.schema
          .createTable('sandboxes')
          .addColumn('uid', t.text, (c) => c.primaryKey())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('labels', t.text, (c) => c.notNull())
          .addColumn('annotations', t.text, (c) => c.notNull())
          .addColumn('spec', t.text, (c) => c.notNull())
          .addColumn('status', t.text, (c) => c.notNull())
          .addColumn('desired', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('resource_version', t.int, (c) => c.notNull())
          .addUniqueConstraint('sandboxes_ns_name', ['namespace', 'name'])
          .execute();
        await db.schema
          .createTable('events')
          .addColumn('id', t.int, t.autoId)
          .addColumn('sandbox_uid', t.text, (c) => c.notNull())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('type', t.text, (c) => c.notNull())
          .addColumn('reason', t.text, (c) => c.notNull())
          .addColumn('message', t.text, (c) => c.notNull())
          .addColumn('time', t.text, (c) => c.notNull().defaultTo(sql`CURRENT_TIMESTAMP`))
          .execute();
        await db.schema.createIndex('events_sandbox').on('events').column('sandbox_uid').execute();
      },
    },
    '0002_extension_objects': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('objects')
          .addColumn('uid', t.text, (c) => c.primaryKey())
          .addColumn('kind', t.text, (c) => c.notNull())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('labels', t.text, (c) => c.notNull())
          .addColumn('annotations', t.text, (c) => c.notNull())
          .addColumn('spec', t.text, (c) => c.notNull())
          .addColumn('status', t.text, (c) => c.notNull())
          .addColumn('generation', t.int, (c) => c.notNull())
          .addColumn('resource_version', t.int, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addUniqueConstraint('objects_kind_ns_name', ['kind', 'namespace', 'name'])
          .execute();
      },
    },
    '0003_network': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('network_leases')
          .addColumn('address', t.text, (c) => c.primaryKey())
          .addColumn('sandbox_uid', t.text, (c) => c.notNull().unique())
          .execute();
        await db.schema
          .createTable('egress_log')
          .addColumn('id', t.int, t.autoId)
          .addColumn('time', t.text, (c) => c.notNull())
          .addColumn('sandbox_uid', t.text)
          .addColumn('namespace', t.text)
          .addColumn('name', t.text)
          .addColumn('record', t.text, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('egress_log_sandbox').on('egress_log').columns(['sandbox_uid', 'id']).execute();
      },
    },
    '0004_identity': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('users')
          .addColumn('name', t.text, (c) => c.primaryKey())
          .addColumn('role', t.text, (c) => c.notNull())
          .addColumn('quota', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('agents')
          .addColumn('user', t.text, (c) => c.notNull().references('users.name'))
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('namespace', t.text, (c) => c.notNull().unique())
          .addColumn('quota', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addPrimaryKeyConstraint('agents_pk', ['user', 'name'])
          .execute();
        // Keys made before users existed become their user's; the first-start admin owns namespace "default".
        await sql`INSERT INTO users (name, role, quota, created_at) SELECT "user", MIN(role), '{}', MIN(created_at) FROM api_keys GROUP BY "user"`.execute(db);
        await sql`INSERT INTO agents ("user", name, namespace, quota, created_at) SELECT name, 'default', CASE WHEN name = 'admin' THEN 'default' ELSE name END, '{}', created_at FROM users`.execute(
          db,
        );
        await db.schema.alterTable('api_keys').addColumn('agent', t.text).execute();
        await db.schema.alterTable('api_keys').dropColumn('role').execute();
        await db.schema.createIndex('api_keys_user').on('api_keys').column('user').execute();
      },
    },
    '0005_audit': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('audit_events')
          .addColumn('seq', t.int, (c) => c.primaryKey())
          .addColumn('time', t.text, (c) => c.notNull())
          .addColumn('actor_user', t.text)
          .addColumn('actor_agent', t.text)
          .addColumn('key_id', t.text)
          .addColumn('source', t.text, (c) => c.notNull())
          .addColumn('action', t.text, (c) => c.notNull())
          .addColumn('namespace', t.text)
          .addColumn('sandbox', t.text)
          .addColumn('object', t.text)
          .addColumn('result', t.text, (c) => c.notNull())
          .addColumn('detail', t.text, (c) => c.notNull())
          .addColumn('prev_hash', t.text, (c) => c.notNull())
          .addColumn('hash', t.text, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('audit_events_time').on('audit_events').column('time').execute();
        await db.schema.createIndex('audit_events_sandbox').on('audit_events').columns(['namespace', 'sandbox']).execute();
        await db.schema.createIndex('audit_events_actor').on('audit_events').columns(['actor_user', 'actor_agent']).execute();
        await db.schema.createIndex('audit_events_action').on('audit_events').column('action').execute();
        await db.schema
          .createTable('audit_checkpoints')
          .addColumn('seq', t.int, (c) => c.primaryKey())
          .addColumn('hash', t.text, (c) => c.notNull())
          .addColumn('signature', t.text, (c) => c.notNull())
          .addColumn('time', t.text, (c) => c.notNull())
          .execute();
      },
    },
    '0006_secrets': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('secrets')
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('key_id', t.text, (c) => c.notNull())
          .addColumn('nonce', t.text, (c) => c.notNull())
          .addColumn('ciphertext', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('updated_at', t.text, (c) => c.notNull())
          .addPrimaryKeyConstraint('secrets_pk', ['namespace', 'name'])
          .execute();
      },
    },
    '0007_gateway': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('gateway_configs')
          .addColumn('namespace', t.text, (c) => c.primaryKey())
          .addColumn('config', t.text, (c) => c.notNull())
          .addColumn('updated_at', t.text, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('gateway_usage')
          .addColumn('day', t.text, (c) => c.notNull())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('sandbox', t.text, (c) => c.notNull())
          .addColumn('model', t.text, (c) => c.notNull())
          .addColumn('user', t.text, (c) => c.notNull())
          .addColumn('agent', t.text, (c) => c.notNull())
          .addColumn('requests', t.int, (c) => c.notNull())
          .addColumn('input_tokens', t.int, (c) => c.notNull())
          .addColumn('output_tokens', t.int, (c) => c.notNull())
          .addPrimaryKeyConstraint('gateway_usage_pk', ['day', 'namespace', 'sandbox', 'model'])
          .execute();
      },
    },
    '0008_portal_sessions': {
      async up(db: Kysely<unknown>) {
        // The web portal's sign-ins: the cookie holds a random id, only its hash is kept; every request rechecks the key.
        await db.schema
          .createTable('portal_sessions')
          .addColumn('id_hash', t.text, (c) => c.primaryKey())
          .addColumn('key_id', t.text, (c) => c.notNull())
          .addColumn('csrf', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('expires_at', t.text, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('portal_sessions_key').on('portal_sessions').column('key_id').execute();
      },
    },
    '0009_volumes_backups': {
      async up(db: Kysely<unknown>) {
        // Named volumes (attached to at most one sandbox) and their backups in the object store.
        await db.schema
          .createTable('volumes')
          .addColumn('uid', t.text, (c) => c.primaryKey())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('size_bytes', t.int, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('sandbox_uid', t.text)
          .addColumn('retain', t.int, (c) => c.notNull())
          .addUniqueConstraint('volumes_name', ['namespace', 'name'])
          .execute();
        await db.schema.createIndex('volumes_sandbox').on('volumes').column('sandbox_uid').unique().execute();
        await db.schema
          .createTable('backups')
          .addColumn('id', t.text, (c) => c.primaryKey())
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('volume', t.text, (c) => c.notNull())
          .addColumn('volume_uid', t.text, (c) => c.notNull())
          .addColumn('size_bytes', t.int, (c) => c.notNull())
          .addColumn('compressed_bytes', t.int, (c) => c.notNull())
          .addColumn('sha256', t.text, (c) => c.notNull())
          .addColumn('store', t.text, (c) => c.notNull())
          .addColumn('key', t.text, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          // 0 while the object is being written or deleted: such a row is never listed, and a start removes it with its object.
          .addColumn('complete', t.int, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('backups_namespace').on('backups').columns(['namespace', 'created_at']).execute();
      },
    },
    '0010_rootfs_backups': {
      async up(db: Kysely<unknown>) {
        // Backups of a sandbox's writable layer (kind 'rootfs'): the source sandbox, its spec (JSON) and image digest,
        // which a restore makes a new sandbox from. Volume backups keep kind 'volume' and these null.
        await db.schema
          .alterTable('backups')
          .addColumn('kind', t.text, (c) => c.notNull().defaultTo('volume'))
          .execute();
        await db.schema.alterTable('backups').addColumn('sandbox', t.text).execute();
        await db.schema.alterTable('backups').addColumn('sandbox_uid', t.text).execute();
        await db.schema.alterTable('backups').addColumn('spec', t.text).execute();
        await db.schema.alterTable('backups').addColumn('image_digest', t.text).execute();
      },
    },
    '0011_desired_phase': {
      async up(db: Kysely<unknown>) {
        // Pause and hibernate became desired state: a sandbox paused or hibernated before this keeps that as its desire,
        // instead of being converged back to Running. Read and written in JS, so no SQL dialect's JSON functions are needed.
        const d = db as Kysely<{ sandboxes: { uid: string; status: string; desired: string } }>;
        for (const r of await d.selectFrom('sandboxes').select(['uid', 'status']).where('desired', '=', 'Running').execute()) {
          const phase = (JSON.parse(r.status) as { phase?: string }).phase;
          if (phase === 'Paused' || phase === 'Hibernated') await d.updateTable('sandboxes').set({ desired: phase }).where('uid', '=', r.uid).execute();
        }
      },
    },
    '0012_images': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('images')
          .addColumn('namespace', t.text, (c) => c.notNull())
          .addColumn('name', t.text, (c) => c.notNull())
          .addColumn('digest', t.text, (c) => c.notNull())
          .addColumn('source', t.text, (c) => c.notNull())
          .addColumn('public', t.int, (c) => c.notNull().defaultTo(0))
          .addColumn('size_bytes', t.int, (c) => c.notNull())
          .addColumn('created_at', t.text, (c) => c.notNull())
          .addColumn('updated_at', t.text, (c) => c.notNull())
          .addPrimaryKeyConstraint('images_pk', ['namespace', 'name'])
          .execute();
      },
    },
    '0013_id_ranges': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('id_ranges')
          .addColumn('slot', t.int, (c) => c.primaryKey())
          .addColumn('sandbox_uid', t.text, (c) => c.notNull().unique())
          .execute();
      },
    },
  };
}
