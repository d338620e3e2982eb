// PostgreSQL as the database replicas share: migrations racing, two stores (replicas) appending to one audit chain,
// whole servers selected by databaseUrl / MOAT_DATABASE_URL, and the errors a bad or unreachable database gives.
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { MOAT_API_VERSION } from '@moat/core';
import { AuditLog } from '../src/audit/log.js';
import { CheckpointSigner } from '../src/audit/signing.js';
import { Identity } from '../src/identity/identity.js';
import { Quotas } from '../src/identity/quotas.js';
import { startServer, type RunningServer } from '../src/server.js';
import { sharedImagesDir } from '../../../test/helpers/server.js';
import { migrations } from '../src/store/migrations.js';
import { Store } from '../src/store/store.js';
import { silent, storedSandbox } from './fixtures.js';
import { startPostgres, type TestPostgres } from './postgres.js';

const V1 = `/apis/${MOAT_API_VERSION}`;

let cluster: TestPostgres;
before(async () => void (cluster = await startPostgres()));
after(() => cluster?.stop());

describe('migrations', () => {
  test('replicas starting together on a fresh database migrate it once; a later start finds nothing to do', async () => {
    const url = await cluster.database('migrate');
    const stores = await Promise.all([Store.open(url), Store.open(url), Store.open(url)]);
    const migrated = await stores[0]!.db
      .selectFrom('kysely_migration' as 'users')
      .select((eb) => eb.fn.countAll().as('n'))
      .executeTakeFirstOrThrow();
    assert.equal(Number(migrated.n), Object.keys(migrations('postgres')).length);
    await Promise.all(stores.map((s) => s.close()));
    const again = await Store.open(url);
    await again.insertKey({ id: 'k', name: 'k', hash: 'h', user: 'u', agent: null, created_at: 'now', expires_at: null, revoked_at: null });
    assert.equal((await again.keyByHash('h'))?.id, 'k');
    await again.close();
  });
});

describe('two replicas on one database', () => {
  test('appending audit events at once: one chain that verifies, every event once, none lost', async () => {
    const url = await cluster.database('audit');
    const dir = await mkdtemp(join(tmpdir(), 'moat-pg-audit-'));
    // Replicas share the signing key (it comes from the same secret), so either can verify the other's checkpoints.
    const signer = await CheckpointSigner.open(join(dir, 'audit-signing.pem'));
    const stores = await Promise.all([Store.open(url), Store.open(url)]);
    try {
      const logs = await Promise.all(stores.map((s) => AuditLog.open(s, signer, silent)));
      const per = 150;
      await Promise.all(
        logs.flatMap((log, r) =>
          Array.from({ length: per }, (_, i) =>
            log.record({ actor: { user: `replica${r}`, source: 'test' }, action: 'test', result: 'success', detail: { r, i } }),
          ),
        ),
      );
      await Promise.all(logs.map((l) => l.flush()));
      for (const log of logs) {
        const report = await log.verify();
        assert.equal(report.ok, true, report.reason);
        assert.equal(report.events, 2 * per);
        assert.ok(report.checkpoints >= 2, 'checkpoints every 100 events, from whichever replica appended them');
      }
      const events = await logs[0]!.query({ limit: 10_000 });
      assert.deepEqual(
        events.map((e) => e.seq),
        Array.from({ length: 2 * per }, (_, i) => i + 1),
      );
      const seen = new Set(events.map((e) => `${e.detail.r}/${e.detail.i}`));
      assert.equal(seen.size, 2 * per, 'every event recorded once');
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('admitting sandboxes at once: the quota holds across replicas', async () => {
    const url = await cluster.database('quota');
    const stores = await Promise.all([Store.open(url), Store.open(url)]);
    try {
      await new Identity(stores[0]!).createUser('bob', 'member', { sandboxes: 2 });
      const replicas = stores.map((s) => ({ store: s, quotas: new Quotas(s, new Identity(s)) }));
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, (_, n) => {
          const { store, quotas } = replicas[n % 2]!;
          const s = storedSandbox(`box${n}`, 'Running');
          return quotas.admit('bob', s.spec, () => store.insertSandbox({ ...s, metadata: { ...s.metadata, namespace: 'bob' } }));
        }),
      );
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 2);
      assert.equal((await stores[0]!.listSandboxes('bob')).length, 2);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });
});

describe('a database that cannot be used', () => {
  const withEnv = async (value: string, fn: () => Promise<void>) => {
    const old = process.env.MOAT_DATABASE_URL;
    process.env.MOAT_DATABASE_URL = value;
    try {
      await fn();
    } finally {
      if (old === undefined) delete process.env.MOAT_DATABASE_URL;
      else process.env.MOAT_DATABASE_URL = old;
    }
  };
  const startFails = async (opts: { databaseUrl?: string }, expected: RegExp) => {
    const dataDir = await mkdtemp(join(tmpdir(), 'moat-pg-bad-'));
    try {
      const err = await startServer({ port: 0, dataDir, prepareDefaultImage: false, logger: silent, ...opts }).then(
        (s) => s.close().then(() => assert.fail('the server started')),
        (e: unknown) => e as Error,
      );
      assert.match(err.message, expected);
      assert.doesNotMatch(err.message, /s3cret/, 'the password is never shown');
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  };

  test('unreachable: the error names the host and the setting that chose it, never the password', async () => {
    const closed = 'postgres://moat:s3cret@127.0.0.1:1/moat';
    await withEnv(closed, () => startFails({}, /cannot use PostgreSQL at 127\.0\.0\.1:1 \(database "moat", user "moat"\).*ECONNREFUSED.*MOAT_DATABASE_URL/));
    await startFails({ databaseUrl: closed }, /127\.0\.0\.1:1.*the databaseUrl option/);
  });

  test('a database that is not there, a URL that does not parse, a URL of another kind', async () => {
    const url = await cluster.database('exists');
    await withEnv(url.replace(/exists$/, 'missing').replace('moat@', 'moat:s3cret@'), () =>
      startFails({}, /database "missing".*does not exist.*MOAT_DATABASE_URL/),
    );
    await withEnv('postgres://moat:s3cret@[not-a-host/x', () => startFails({}, /does not parse.*MOAT_DATABASE_URL/));
    await withEnv('mysql://moat:s3cret@127.0.0.1/moat', () => startFails({}, /MOAT_DATABASE_URL must be a postgres:\/\/ or postgresql:\/\/ URL/));
  });
});

describe('whole servers on one database', () => {
  // Two servers run on this host at once: each needs host networking of its own (names, interfaces, range, ports),
  // apart from test/helpers' test networks (10.234-243) and the dev cluster's (10.250-252); MOAT_TEST_NET picks another set.
  const i = Number(process.env.MOAT_TEST_NET ?? 0);
  const network = (n: 0 | 1) => ({
    name: `moatpg${n}${i}`,
    ifPrefix: `q${'ab'[n]}${'abcdefghij'[i]}`,
    subnet: `10.${220 + i}.${n * 128}.0/17`,
    serviceAddress: `10.${220 + i}.${n * 128}.1`,
    proxyPort: 13300 + 10 * i + 2 * n,
  });
  // The images dir every test server shares: what the runtimes prepare there in the background outlives these data dirs.
  const start = (dataDir: string, n: 0 | 1, databaseUrl: string) =>
    startServer({
      port: 0,
      dataDir,
      databaseUrl,
      imagesDir: sharedImagesDir(),
      prepareDefaultImage: false,
      network: network(n),
      logger: pino({ level: process.env.MOAT_TEST_LOG ?? 'silent' }),
    });
  const call = (s: RunningServer, key: string, path: string, json?: unknown) =>
    fetch(s.url + path, {
      method: json === undefined ? 'GET' : 'POST',
      headers: { authorization: `Bearer ${key}`, ...(json === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(json === undefined ? {} : { body: JSON.stringify(json) }),
    });
  const whoami = async (s: RunningServer, key: string) => {
    const r = await call(s, key, `${V1}/whoami`);
    assert.equal(r.status, 200, `whoami on ${s.url}`);
    return ((await r.json()) as { user: string }).user;
  };
  const newUser = async (s: RunningServer, name: string) => {
    const r = await call(s, s.adminKey, `${V1}/users`, { name, role: 'member' });
    assert.equal(r.status, 201);
    return ((await r.json()) as { key: { key: string } }).key.key;
  };

  test('a key made through the API works after a restart, and on a second server sharing the database', async () => {
    const url = await cluster.database('servers');
    const dirs = [await mkdtemp(join(tmpdir(), 'moat-pg-a-')), await mkdtemp(join(tmpdir(), 'moat-pg-b-'))] as const;
    const running: RunningServer[] = [];
    try {
      const first = await start(dirs[0], 0, url);
      const carol = await newUser(first, 'carol');
      assert.equal(await whoami(first, carol), 'carol');
      await first.close();

      const a = await start(dirs[0], 0, url);
      running.push(a);
      assert.equal(await whoami(a, carol), 'carol', 'the key outlives the server');

      // The second replica gets the first's keys (in a cluster they come from one secret): the master key for
      // secrets, the audit signing key, so each can check what the other wrote.
      for (const f of ['master.key', 'audit-signing.pem']) await copyFile(join(dirs[0], f), join(dirs[1], f));
      const b = await start(dirs[1], 1, url);
      running.push(b);
      assert.equal(await whoami(b, carol), 'carol');
      assert.equal(await whoami(b, a.adminKey), 'admin');
      const dave = await newUser(b, 'dave');
      assert.equal(await whoami(a, dave), 'dave');

      const verify = await call(b, b.adminKey, `${V1}/audit/verify`);
      const report = (await verify.json()) as { ok: boolean; events: number };
      assert.equal(report.ok, true, JSON.stringify(report));
      assert.ok(report.events >= 2, 'both servers append to one chain');
    } finally {
      for (const s of running) await s.close();
      for (const d of dirs) await rm(d, { recursive: true, force: true });
    }
  });
});
