import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runProcess } from '../../helpers/run-process.js';
import { startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';
import { ready, remove, run, withClaim, withTemplate } from '../../helpers/volumes.js';

const API = '/apis/moat.dev/v1/namespaces/default';

interface Backup {
  id: string;
  volume: string;
  sizeBytes: number;
  compressedBytes: number;
  sha256: string;
  store: string;
  key: string;
}

/** Random and repetitive files, small and large, a directory tree, a symlink: their checksums, sorted. */
const FILL =
  'cd /data && mkdir -p tree/a/b && head -c 3000000 /dev/urandom > random.bin && seq 1 200000 > tree/a/b/seq.txt && echo small > tree/small && ln -sf tree/small link && sync';
const SUMS = 'cd "$1" && find . -path ./lost+found -prune -o -type f -print | sort | xargs sha256sum && readlink link';

async function backup(server: TestServer, body: Record<string, string>): Promise<Backup> {
  const res = await server.api(`${API}/backups`, { method: 'POST', json: body });
  const text = await res.text();
  assert.equal(res.status, 201, text);
  return JSON.parse(text) as Backup;
}

async function restore(server: TestServer, id: string, volume: string) {
  return server.api(`${API}/backups/${id}/restore`, { method: 'POST', json: { volume } });
}

describe('backups (local store)', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(() => server?.close());

  test('ids and names are checked: no path tricks', async () => {
    for (const id of ['..%2F..%2Fetc%2Fpasswd', 'bk-xyz', 'bk-0123456789abcdeF', '%2e%2e']) {
      const res = await server.api(`${API}/backups/${id}`);
      assert.ok([400, 404].includes(res.status), `${id}: ${res.status}`);
      assert.notEqual((await restore(server, id, 'x')).status, 201);
    }
    assert.equal((await server.api(`${API}/backups/bk-0123456789abcdef`)).status, 404);
    assert.equal((await server.api(`${API}/backups`, { method: 'POST', json: {} })).status, 400);
    assert.equal((await server.api(`${API}/backups`, { method: 'POST', json: { volume: '../x' } })).status, 400);
    assert.equal((await server.api(`${API}/backups`, { method: 'POST', json: { volume: 'nope' } })).status, 404);
  });

  for (const { runtime, skip } of testRuntimes()) {
    test(`${runtime}: backup → delete → restore → byte-identical files`, { skip }, async () => {
      const box = `src-${runtime}`;
      await ready(server, withTemplate(box, runtime, '64Mi', 'Retain'), runtime);
      await run(server, box, FILL);
      const before = await run(server, box, `${SUMS}`.replace('"$1"', '/data'));
      // While the sandbox runs and writes: the snapshot is taken frozen, and the sandbox goes on afterwards.
      const b = await backup(server, { sandbox: box });
      assert.equal(b.volume, `data-${box}`);
      assert.equal(b.sizeBytes, 64 * 2 ** 20);
      assert.ok(b.compressedBytes < 8_000_000, `compressed ${b.compressedBytes}`);
      assert.equal(b.store, `local:${join(server.dataDir, 'backups')}`);
      const stored = await readFile(join(server.dataDir, 'backups', b.key));
      assert.equal(createHash('sha256').update(stored).digest('hex'), b.sha256);
      assert.equal(stored.subarray(0, 4).toString('hex'), '28b52ffd', 'a zstd frame');
      await run(server, box, 'echo after > /data/after'); // thawed
      const list = (await (await server.api(`${API}/backups?volume=data-${box}`)).json()) as { items: Backup[] };
      assert.deepEqual(
        list.items.map((x) => x.id),
        [b.id],
      );

      await remove(server, box);
      assert.equal((await server.api(`${API}/volumes/data-${box}`, { method: 'DELETE' })).status, 204);

      const res = await restore(server, b.id, `restored-${runtime}`);
      assert.equal(res.status, 201, await res.text());
      assert.equal((await restore(server, b.id, `restored-${runtime}`)).status, 409, 'the name is taken now');
      const into = `dst-${runtime}`;
      await ready(server, withClaim(into, runtime, `restored-${runtime}`), runtime);
      const after = await run(server, into, `${SUMS}`.replace('"$1"', '/data'));
      assert.equal(after, before);
      assert.equal((await run(server, into, 'test -e /data/after || echo absent')).trim(), 'absent');
      await remove(server, into);
    });
  }

  test('the CLI: moat volume list|create|delete, moat backup create|list|restore', async () => {
    const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');
    const env = {
      ...(process.env as Record<string, string>),
      MOAT_URL: server.url,
      MOAT_API_KEY: server.adminKey,
      MOAT_CONFIG: join(server.dataDir, 'cli.json'),
    };
    const moat = async (...args: string[]) => {
      const r = await runProcess(process.execPath, [CLI, ...args], { env });
      assert.equal(r.code, 0, `moat ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    assert.equal(await moat('volume', 'create', 'cli-vol', '--size', '20Mi'), 'volume cli-vol created (20Mi)\n');
    assert.match(await moat('volume', 'list'), /^cli-vol\s+20Mi\s+-\s+yes\s/m);
    const made = await moat('backup', 'create', '--volume', 'cli-vol');
    const id = /^backup (bk-[0-9a-f]{16}) of volume cli-vol created: /.exec(made)?.[1];
    assert.ok(id, made);
    assert.match(await moat('backup', 'list', '--volume', 'cli-vol'), new RegExp(`^${id}\\s+volume\\s+cli-vol\\s`, 'm'));
    assert.match(await moat('backup', 'restore', id, '--volume', 'cli-copy'), /^volume cli-copy \(20Mi\) restored from bk-/);
    const listed = JSON.parse(await moat('volume', 'list', '-o', 'json')) as { items: { name: string }[] };
    assert.deepEqual(
      listed.items.map((v) => v.name).filter((n) => n.startsWith('cli-')),
      ['cli-copy', 'cli-vol'],
    );
    for (const v of ['cli-vol', 'cli-copy']) assert.equal(await moat('volume', 'delete', v), `volume ${v} deleted\n`);
    const bad = await runProcess(process.execPath, [CLI, 'backup', 'create'], { env });
    assert.notEqual(bad.code, 0);
    // Every mutation is in the audit log, with its outcome.
    await new Promise((r) => setTimeout(r, 200)); // events are written once each response is done
    const audit = (await (await server.api('/apis/moat.dev/v1/audit?namespace=default&limit=10000')).json()) as {
      items: { action: string; result: string; object: string }[];
    };
    const actions = new Set(audit.items.filter((e) => e.result === 'success').map((e) => e.action));
    for (const a of ['POST volumes', 'POST backups', 'POST backups/{id}/restore', 'DELETE volumes/{name}'])
      assert.ok(actions.has(a), `${a} audited: ${[...actions].join(', ')}`);
  });

  test('a corrupt object is refused, and no volume is made', async () => {
    const made = await server.api(`${API}/volumes`, { method: 'POST', json: { name: 'small', size: '16Mi' } });
    assert.equal(made.status, 201);
    const b = await backup(server, { volume: 'small' });
    const file = join(server.dataDir, 'backups', b.key);
    const bytes = await readFile(file);
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(file, bytes);
    const res = await restore(server, b.id, 'from-corrupt');
    assert.equal(res.status, 422, await res.text());
    assert.equal((await server.api(`${API}/volumes/from-corrupt`)).status, 404);
    assert.deepEqual(
      (await readdir(join(server.dataDir, 'volumes'))).filter((f) => f.includes('.tmp-')),
      [],
    );
    assert.equal((await server.api(`${API}/backups/${b.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await server.api(`${API}/backups/${b.id}`)).status, 404);
  });
});

describe('backups: disk full', { skip: process.getuid?.() !== 0 && 'needs root to mount a tmpfs' }, () => {
  let server: TestServer;
  let store: string;
  before(async () => {
    store = await mkdtemp(join(tmpdir(), 'moat-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'moat-test-full', store]);
    process.env.MOAT_BACKUP_DIR = store;
    try {
      server = await startTestServer();
    } finally {
      delete process.env.MOAT_BACKUP_DIR;
    }
  });
  after(async () => {
    await server?.close();
    execFileSync('umount', [store]);
    await rm(store, { recursive: true, force: true });
  });

  test('a full store: a clear error, nothing partial, the volume attached and working', async () => {
    const box = 'full-store';
    await ready(server, withTemplate(box, 'runc', '64Mi'), 'runc');
    await run(server, box, 'head -c 8000000 /dev/urandom > /data/big && sha256sum /data/big > /data/big.sum && sync');
    const res = await server.api(`${API}/backups`, { method: 'POST', json: { volume: `data-${box}` } });
    const text = await res.text();
    assert.equal(res.status, 507, text);
    assert.match(text, /no space left/);
    assert.ok(text.includes(`local:${store}`), text);
    const left = await readdir(store, { recursive: true, withFileTypes: true });
    assert.deepEqual(
      left.filter((f) => f.isFile()).map((f) => f.name),
      [],
      'the partial object is removed',
    );
    assert.deepEqual(((await (await server.api(`${API}/backups`)).json()) as { items: unknown[] }).items, []);
    // Not left frozen: the sandbox writes, and its data is intact.
    await run(server, box, 'echo still-writable > /data/after && sha256sum -c /data/big.sum');
    const v = (await (await server.api(`${API}/volumes/data-${box}`)).json()) as { sandbox: string };
    assert.equal(v.sandbox, box);
    await remove(server, box);
  });
});

describe('backups: start-up removes what a killed backup left', () => {
  test('temporary objects and images are removed', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'moat-leftover-'));
    try {
      await (await startTestServer({ dataDir })).close();
      await mkdir(join(dataDir, 'backups', 'default'), { recursive: true });
      await writeFile(join(dataDir, 'backups', 'default', 'bk-0000000000000000.img.zst.tmp-abc'), 'partial');
      await writeFile(join(dataDir, 'volumes', '00000000-0000-0000-0000-000000000000.img.tmp-abc'), 'partial');
      await (await startTestServer({ dataDir })).close();
      assert.deepEqual(await readdir(join(dataDir, 'backups', 'default')), []);
      assert.deepEqual(await readdir(join(dataDir, 'volumes')), []);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

/** A free loopback port. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('backups (S3-compatible store)', () => {
  let server: TestServer;
  let s3: ChildProcess;
  let s3dir: string;
  before(async () => {
    s3dir = await mkdtemp(join(tmpdir(), 'moat-s3-'));
    const port = await freePort();
    // s3rver: a real S3 API (SigV4, XML errors) on loopback, objects in a directory.
    const bin = join(import.meta.dirname, '../../../node_modules/s3rver/bin/s3rver.js');
    s3 = spawn(
      process.execPath,
      [bin, '--address', '127.0.0.1', '--port', String(port), '--directory', s3dir, '--configure-bucket', 'moat-backups', '--silent'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    for (let i = 0; ; i++) {
      const up = await fetch(`http://127.0.0.1:${port}/`).then(
        () => true,
        () => false,
      );
      if (up) break;
      if (i > 100) throw new Error('s3rver did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    Object.assign(process.env, {
      MOAT_BACKUP_S3_ENDPOINT: `http://127.0.0.1:${port}`,
      MOAT_BACKUP_S3_BUCKET: 'moat-backups',
      MOAT_BACKUP_S3_ACCESS_KEY_ID: 'S3RVER',
      MOAT_BACKUP_S3_SECRET_ACCESS_KEY: 'S3RVER',
    });
    try {
      server = await startTestServer();
    } finally {
      for (const k of ['MOAT_BACKUP_S3_ENDPOINT', 'MOAT_BACKUP_S3_BUCKET', 'MOAT_BACKUP_S3_ACCESS_KEY_ID', 'MOAT_BACKUP_S3_SECRET_ACCESS_KEY'])
        delete process.env[k];
    }
  });
  after(async () => {
    await server?.close();
    s3?.kill();
    await rm(s3dir, { recursive: true, force: true });
  });

  test('backup to S3, restore from it, byte-identical', async () => {
    const box = 's3-src';
    await ready(server, withTemplate(box, 'runc', '32Mi'), 'runc');
    await run(server, box, FILL);
    const before = await run(server, box, SUMS.replace('"$1"', '/data'));
    const b = await backup(server, { sandbox: box });
    assert.match(b.store, /^s3:http:\/\/127\.0\.0\.1:\d+\/moat-backups$/);
    await remove(server, box);
    const res = await restore(server, b.id, 'from-s3');
    assert.equal(res.status, 201, await res.text());
    await ready(server, withClaim('s3-dst', 'runc', 'from-s3'), 'runc');
    assert.equal(await run(server, 's3-dst', SUMS.replace('"$1"', '/data')), before);
    await remove(server, 's3-dst');
    assert.equal((await server.api(`${API}/backups/${b.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await restore(server, b.id, 'gone')).status, 404);
  });
});
