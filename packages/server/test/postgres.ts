// A real, throwaway PostgreSQL for the tests: a cluster of its own in a temporary directory, made with Debian's
// server binaries, listening on a free loopback port only, removed afterwards. Never a mock.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { Store } from '../src/store/store.js';

const run = promisify(execFile);

/** The newest installed server's bin directory; CI installs it, so a missing one is a failure, not a skip. */
function binDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest) throw new Error(`no PostgreSQL server binaries under ${root}/*/bin: run scripts/setup.sh (it installs Debian's postgresql package)`);
  return join(root, newest, 'bin');
}

/** PostgreSQL refuses to run as root: as root the cluster belongs to the postgres system user (or nobody). */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n');
  const entry = (name: string) => passwd.find((l) => l.startsWith(`${name}:`))?.split(':');
  const e = entry('postgres') ?? entry('nobody');
  if (!e) throw new Error('neither a postgres nor a nobody user to run PostgreSQL as');
  return { uid: Number(e[2]), gid: Number(e[3]) };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

export interface TestPostgres {
  /** A new, empty database on the cluster: its URL. */
  database(name: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startPostgres(): Promise<TestPostgres> {
  const bin = binDir();
  const user = serverUser();
  const dir = await mkdtemp(join(tmpdir(), 'moat-pg-'));
  if (user) await chown(dir, user.uid, user.gid);
  const as = (cmd: string, args: string[]) =>
    user
      ? run('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', join(bin, cmd), ...args], { timeout: 60_000 })
      : run(join(bin, cmd), args, { timeout: 60_000 });
  const data = join(dir, 'data');
  const port = await freePort();
  await as('initdb', ['-D', data, '-U', 'moat', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8', '--locale-provider=icu', '--icu-locale=en']);
  // Loopback only, its socket in its own directory; durability is not what these tests are about.
  const options = `-h 127.0.0.1 -p ${port} -k ${dir} -c fsync=off -c full_page_writes=off`;
  await as('pg_ctl', ['start', '-w', '-D', data, '-l', join(dir, 'server.log'), '-o', options]);
  const base = `postgres://moat@127.0.0.1:${port}`;
  return {
    async database(name) {
      const c = new pg.Client({ connectionString: `${base}/postgres` });
      await c.connect();
      try {
        await c.query(`create database "${name}"`);
      } finally {
        await c.end();
      }
      return `${base}/${name}`;
    },
    async stop() {
      await as('pg_ctl', ['stop', '-D', data, '-m', 'immediate']).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The suite twice: on SQLite (in memory) and on PostgreSQL (one cluster for
 * the suite, a fresh database for every `open`), so both mean the same.
 */
export function onEachDatabase(suite: (open: () => Promise<Store>) => void): void {
  describe('SQLite', () => suite(() => Store.open(':memory:')));
  describe('PostgreSQL', () => {
    let cluster: TestPostgres | undefined;
    let databases = 0;
    before(async () => void (cluster = await startPostgres()));
    after(() => cluster?.stop());
    suite(async () => Store.open(await cluster!.database(`test${++databases}`)));
  });
}
