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
};
