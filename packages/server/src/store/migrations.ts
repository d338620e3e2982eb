import { sql, type Kysely, type Migration } from 'kysely';

/** Schema history. Append only: a released migration is never edited. */
export const migrations: Record<string, Migration> = {
  '0001_core': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('api_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull().unique())
        .addColumn('user', 'text', (c) => c.notNull())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'text')
        .addColumn('revoked_at', 'text')
        .execute();
      await db.schema
        .createTable('sandboxes')
        .addColumn('uid', 'text', (c) => c.primaryKey())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('labels', 'text', (c) => c.notNull())
        .addColumn('annotations', 'text', (c) => c.notNull())
        .addColumn('spec', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('desired', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('resource_version', 'integer', (c) => c.notNull())
        .addUniqueConstraint('sandboxes_ns_name', ['namespace', 'name'])
        .execute();
      await db.schema
        .createTable('events')
        .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('sandbox_uid', 'text', (c) => c.notNull())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('reason', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('time', 'text', (c) => c.notNull().defaultTo(sql`CURRENT_TIMESTAMP`))
        .execute();
      await db.schema.createIndex('events_sandbox').on('events').column('sandbox_uid').execute();
    },
  },
  '0002_extension_objects': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('objects')
        .addColumn('uid', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('labels', 'text', (c) => c.notNull())
        .addColumn('annotations', 'text', (c) => c.notNull())
        .addColumn('spec', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('resource_version', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('objects_kind_ns_name', ['kind', 'namespace', 'name'])
        .execute();
    },
  },
  '0003_network': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('network_leases')
        .addColumn('address', 'text', (c) => c.primaryKey())
        .addColumn('sandbox_uid', 'text', (c) => c.notNull().unique())
        .execute();
      await db.schema
        .createTable('egress_log')
        .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('time', 'text', (c) => c.notNull())
        .addColumn('sandbox_uid', 'text')
        .addColumn('namespace', 'text')
        .addColumn('name', 'text')
        .addColumn('record', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('egress_log_sandbox').on('egress_log').columns(['sandbox_uid', 'id']).execute();
    },
  },
  '0004_identity': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('users')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('quota', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('agents')
        .addColumn('user', 'text', (c) => c.notNull().references('users.name'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('namespace', 'text', (c) => c.notNull().unique())
        .addColumn('quota', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('agents_pk', ['user', 'name'])
        .execute();
      // Keys made before users existed become their user's; the first-start admin owns namespace "default".
      await sql`INSERT INTO users (name, role, quota, created_at) SELECT "user", MIN(role), '{}', MIN(created_at) FROM api_keys GROUP BY "user"`.execute(db);
      await sql`INSERT INTO agents ("user", name, namespace, quota, created_at) SELECT name, 'default', CASE WHEN name = 'admin' THEN 'default' ELSE name END, '{}', created_at FROM users`.execute(
        db,
      );
      await db.schema.alterTable('api_keys').addColumn('agent', 'text').execute();
      await db.schema.alterTable('api_keys').dropColumn('role').execute();
      await db.schema.createIndex('api_keys_user').on('api_keys').column('user').execute();
    },
  },
  '0005_audit': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('audit_events')
        .addColumn('seq', 'integer', (c) => c.primaryKey())
        .addColumn('time', 'text', (c) => c.notNull())
        .addColumn('actor_user', 'text')
        .addColumn('actor_agent', 'text')
        .addColumn('key_id', 'text')
        .addColumn('source', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('namespace', 'text')
        .addColumn('sandbox', 'text')
        .addColumn('object', 'text')
        .addColumn('result', 'text', (c) => c.notNull())
        .addColumn('detail', 'text', (c) => c.notNull())
        .addColumn('prev_hash', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_events_time').on('audit_events').column('time').execute();
      await db.schema.createIndex('audit_events_sandbox').on('audit_events').columns(['namespace', 'sandbox']).execute();
      await db.schema.createIndex('audit_events_actor').on('audit_events').columns(['actor_user', 'actor_agent']).execute();
      await db.schema.createIndex('audit_events_action').on('audit_events').column('action').execute();
      await db.schema
        .createTable('audit_checkpoints')
        .addColumn('seq', 'integer', (c) => c.primaryKey())
        .addColumn('hash', 'text', (c) => c.notNull())
        .addColumn('signature', 'text', (c) => c.notNull())
        .addColumn('time', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0006_secrets': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('secrets')
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('key_id', 'text', (c) => c.notNull())
        .addColumn('nonce', 'text', (c) => c.notNull())
        .addColumn('ciphertext', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('secrets_pk', ['namespace', 'name'])
        .execute();
    },
  },
  '0007_gateway': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('gateway_configs')
        .addColumn('namespace', 'text', (c) => c.primaryKey())
        .addColumn('config', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('gateway_usage')
        .addColumn('day', 'text', (c) => c.notNull())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('sandbox', 'text', (c) => c.notNull())
        .addColumn('model', 'text', (c) => c.notNull())
        .addColumn('user', 'text', (c) => c.notNull())
        .addColumn('agent', 'text', (c) => c.notNull())
        .addColumn('requests', 'integer', (c) => c.notNull())
        .addColumn('input_tokens', 'integer', (c) => c.notNull())
        .addColumn('output_tokens', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('gateway_usage_pk', ['day', 'namespace', 'sandbox', 'model'])
        .execute();
    },
  },
  '0008_portal_sessions': {
    async up(db: Kysely<unknown>) {
      // The web portal's sign-ins: the cookie holds a random id, only its hash is kept; every request rechecks the key.
      await db.schema
        .createTable('portal_sessions')
        .addColumn('id_hash', 'text', (c) => c.primaryKey())
        .addColumn('key_id', 'text', (c) => c.notNull())
        .addColumn('csrf', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('portal_sessions_key').on('portal_sessions').column('key_id').execute();
    },
  },
  '0009_volumes_backups': {
    async up(db: Kysely<unknown>) {
      // Named volumes (attached to at most one sandbox) and their backups in the object store.
      await db.schema
        .createTable('volumes')
        .addColumn('uid', 'text', (c) => c.primaryKey())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('sandbox_uid', 'text')
        .addColumn('retain', 'integer', (c) => c.notNull())
        .addUniqueConstraint('volumes_name', ['namespace', 'name'])
        .execute();
      await db.schema.createIndex('volumes_sandbox').on('volumes').column('sandbox_uid').unique().execute();
      await db.schema
        .createTable('backups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('namespace', 'text', (c) => c.notNull())
        .addColumn('volume', 'text', (c) => c.notNull())
        .addColumn('volume_uid', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('compressed_bytes', 'integer', (c) => c.notNull())
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('store', 'text', (c) => c.notNull())
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        // 0 while the object is being written or deleted: such a row is never listed, and a start removes it with its object.
        .addColumn('complete', 'integer', (c) => c.notNull())
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
        .addColumn('kind', 'text', (c) => c.notNull().defaultTo('volume'))
        .execute();
      await db.schema.alterTable('backups').addColumn('sandbox', 'text').execute();
      await db.schema.alterTable('backups').addColumn('sandbox_uid', 'text').execute();
      await db.schema.alterTable('backups').addColumn('spec', 'text').execute();
      await db.schema.alterTable('backups').addColumn('image_digest', 'text').execute();
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
};
