import pg from 'pg';
import { PostgresDialect } from 'kysely';

/** A database target is PostgreSQL when it is such a URL; anything else is a SQLite file. */
export const isPostgresUrl = (target: string) => /^postgres(ql)?:\/\//i.test(target);

/** Where a URL points, for messages: host, port, database and user, never the password. */
export function describePostgres(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    // Not even the input is repeated: it may hold a password.
    throw new Error('the PostgreSQL URL does not parse: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE');
  }
  const host = u.hostname ? `${u.hostname}:${u.port || 5432}` : (u.searchParams.get('host') ?? 'localhost');
  const database = decodeURIComponent(u.pathname.slice(1)) || decodeURIComponent(u.username) || 'postgres';
  return `PostgreSQL at ${host} (database "${database}"${u.username ? `, user "${decodeURIComponent(u.username)}"` : ''})`;
}

const INT8 = 20;
/**
 * pg returns bigint (int8) as a string, since it may not fit a JS number.
 * Moat's integers (sizes up to 2^40, counters, sequence numbers) do, so they
 * come back as numbers, as SQLite gives them; one that does not fit fails its
 * query rather than lose precision.
 */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`the database returned ${text}, beyond the integers Moat handles exactly`);
  return n;
}
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8 ? parseInt8 : pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig['getTypeParser'],
};

export interface Postgres {
  dialect: PostgresDialect;
  /** Runs fn holding the advisory lock `name`, which every replica on this database respects. */
  exclusive<T>(name: string, fn: () => Promise<T>): Promise<T>;
  /** Ends the lock connections (Kysely ends the dialect's pool). */
  close(): Promise<void>;
}

/** Connects (failing with a message that says where, when that does not work). */
export async function connectPostgres(url: string): Promise<Postgres> {
  const where = describePostgres(url);
  const config: pg.PoolConfig = { connectionString: url, connectionTimeoutMillis: 10_000, types };
  const pool = new pg.Pool(config);
  // Advisory locks are held on connections of their own for as long as their function runs, while that function
  // queries through the main pool: a lock holder never waits for a connection that another holder keeps.
  const locks = new pg.Pool({ ...config, max: 4 });
  // An idle connection that breaks (the server restarted) is dropped by the pool and the next query opens another;
  // without a listener the pool's 'error' event would end the process.
  for (const p of [pool, locks]) p.on('error', () => {});
  try {
    await pool.query('select 1');
  } catch (err) {
    await Promise.all([pool.end(), locks.end()]);
    const e = err as Error & { code?: string };
    throw new Error(`cannot use ${where}: ${e.message || e.code || String(err)}`);
  }
  return {
    dialect: new PostgresDialect({ pool }),
    async exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
      const client = await locks.connect();
      let unlocked = false;
      try {
        await client.query('select pg_advisory_lock(hashtext($1))', [name]);
        try {
          return await fn();
        } finally {
          await client.query('select pg_advisory_unlock(hashtext($1))', [name]);
          unlocked = true;
        }
      } finally {
        // A connection that may still hold the lock is closed, which releases it.
        client.release(!unlocked);
      }
    },
    close: () => locks.end(),
  };
}
