// Backups of a sandbox's writable layer (what it changed outside its volume), restored into a new sandbox.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import SQLite from 'better-sqlite3';
import { runProcess } from '../../helpers/run-process.js';
import { NS, hostSandboxIds, sandboxBody, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';
import { remove, run, waitReady } from '../../helpers/volumes.js';

const API = '/apis/moat.dev/v1/namespaces/default';
interface Backup {
  id: string;
  kind: string;
  volume?: string;
  sandbox?: string;
  runtimeClassName?: string;
  imageDigest?: string;
  sizeBytes: number;
  compressedBytes: number;
  sha256: string;
  key: string;
}
interface Stored {
  metadata: { name: string; uid: string };
  spec: { podTemplate: { spec: { runtimeClassName?: string } } };
  status: { phase: string; image?: { digest: string } };
}

const post = (server: TestServer, path: string, json: unknown) => server.api(`${API}${path}`, { method: 'POST', json });

/**
 * Changes outside /data: a random and a text file under /root/proj, an "installed" tool in /usr/local/bin,
 * a file of the image deleted (an overlay whiteout), an image file rewritten; and one on /data, not in the backup.
 */
const CHANGE = [
  'set -e',
  'mkdir -p /root/proj/deep/er',
  'head -c 3000000 /dev/urandom > /root/proj/a.bin',
  'seq 1 100000 > /root/proj/deep/er/seq.txt',
  'printf "#!/bin/sh\\necho tool-says-hi\\n" > /usr/local/bin/mytool && chmod 755 /usr/local/bin/mytool',
  'test -e /etc/issue && rm /etc/issue',
  'echo changed > /etc/motd',
  'ln -sf /root/proj/a.bin /root/link',
  'echo on-data > /data/d',
  'sync',
].join('\n');
const CHECK = [
  'cd / && sha256sum root/proj/a.bin root/proj/deep/er/seq.txt usr/local/bin/mytool etc/motd',
  'stat -c %a /usr/local/bin/mytool',
  'readlink /root/link',
  'test -e /etc/issue && echo issue-present || echo issue-deleted',
  'mytool',
].join('; ');

describe('backups of the writable layer (rootfs)', () => {
  let server: TestServer;
  let volumeBackup: Backup;
  before(async () => {
    server = await startTestServer();
    assert.equal((await post(server, '/volumes', { name: 'rf-vol', size: '16Mi' })).status, 201);
    const res = await post(server, '/backups', { volume: 'rf-vol' });
    assert.equal(res.status, 201);
    volumeBackup = (await res.json()) as Backup;
  });
  after(() => server?.close());

  test('the request is checked: rootfs needs a sandbox, kinds are not mixed up', async () => {
    assert.equal(volumeBackup.kind, 'volume');
    assert.equal(volumeBackup.volume, 'rf-vol');
    for (const body of [{ volume: 'rf-vol', rootfs: true }, { rootfs: true }, { sandbox: '../x', rootfs: true }, { sandbox: 'x', rootfs: 'yes' }]) {
      const res = await post(server, '/backups', body);
      assert.equal(res.status, 400, `${JSON.stringify(body)}: ${await res.text()}`);
    }
    assert.equal((await post(server, '/backups', { sandbox: 'nope', rootfs: true })).status, 404);
    // A volume backup restored as a sandbox: 400, and no sandbox.
    const res = await post(server, `/backups/${volumeBackup.id}/restore`, { sandbox: 'from-volume' });
    const text = await res.text();
    assert.equal(res.status, 400, text);
    assert.match((JSON.parse(text) as { message: string }).message, /is of volume "rf-vol", not of a sandbox's writable layer/);
    assert.equal((await server.api(`${NS}/from-volume`)).status, 404);
    for (const body of [{}, { volume: 'a', sandbox: 'b' }, { sandbox: 'Bad_Name' }]) {
      assert.equal((await post(server, `/backups/${volumeBackup.id}/restore`, body)).status, 400, JSON.stringify(body));
    }
  });

  for (const { runtime, skip } of testRuntimes()) {
    test(`${runtime}: writable layer backed up while running → delete → restored into a new sandbox, byte-identical`, { skip }, async () => {
      const src = `rf-src-${runtime}`;
      const created = await server.api(NS, { method: 'POST', json: sandboxBody(src, { runtime }) });
      assert.equal(created.status, 201, await created.text());
      const source = await waitReady<Stored>(server, src, runtime);
      await run(server, src, CHANGE);
      const before = await run(server, src, CHECK);
      assert.match(before, /issue-deleted\ntool-says-hi\n$/);

      // While it runs (a writer going on): frozen for the copy, running afterwards.
      await run(server, src, 'nohup sh -c "i=0; while [ $i -lt 200 ]; do echo $i >> /root/bg.log; i=$((i+1)); sleep 0.05; done" >/dev/null 2>&1 &');
      const res = await post(server, '/backups', { sandbox: src, rootfs: true });
      const text = await res.text();
      assert.equal(res.status, 201, text);
      const b = JSON.parse(text) as Backup;
      assert.equal(b.kind, 'rootfs');
      assert.equal(b.sandbox, src);
      assert.equal(b.volume, undefined);
      assert.equal(b.runtimeClassName, runtime);
      assert.equal(b.imageDigest, source.status.image?.digest);
      const stored = await readFile(join(server.dataDir, 'backups', b.key));
      assert.equal(createHash('sha256').update(stored).digest('hex'), b.sha256);
      assert.equal(stored.subarray(0, 4).toString('hex'), '28b52ffd', 'a zstd frame');
      assert.ok(b.compressedBytes < b.sizeBytes / 4, `compressed ${b.compressedBytes} of ${b.sizeBytes}`);
      await run(server, src, 'echo after > /root/after'); // thawed, or continued
      assert.equal(((await (await server.api(`${NS}/${src}`)).json()) as Stored).status.phase, 'Running');
      // Paused: runc and gVisor are frozen on the host all the same; a paused microVM's guest cache cannot be flushed (409).
      assert.equal((await server.api(`${NS}/${src}/pause`, { method: 'POST' })).status, 200);
      const paused = await post(server, '/backups', { sandbox: src, rootfs: true });
      const pausedText = await paused.text();
      if (runtime === 'microvm') {
        assert.equal(paused.status, 409, pausedText);
        assert.match(pausedText, /resume or wake it/);
      } else {
        assert.equal(paused.status, 201, pausedText);
        assert.equal((await server.api(`${API}/backups/${(JSON.parse(pausedText) as Backup).id}`, { method: 'DELETE' })).status, 204);
      }
      assert.equal(((await (await server.api(`${NS}/${src}`)).json()) as Stored).status.phase, 'Paused', 'still paused');
      assert.equal((await server.api(`${NS}/${src}/resume`, { method: 'POST' })).status, 200);
      const list = (await (await server.api(`${API}/backups`)).json()) as { items: Backup[] };
      assert.deepEqual(
        list.items.filter((x) => x.id === b.id).map((x) => [x.kind, x.sandbox]),
        [['rootfs', src]],
      );
      assert.ok(
        !((await (await server.api(`${API}/backups?volume=rf-vol`)).json()) as { items: Backup[] }).items.some((x) => x.id === b.id),
        "not listed as a volume's",
      );

      // A rootfs backup restored as a volume: 400.
      const asVolume = await post(server, `/backups/${b.id}/restore`, { volume: `rf-as-volume-${runtime}` });
      const asVolumeText = await asVolume.text();
      assert.equal(asVolume.status, 400, asVolumeText);
      assert.match(asVolumeText, /writable layer \(kind rootfs\), not of a volume/);
      assert.equal((await server.api(`${API}/volumes/rf-as-volume-${runtime}`)).status, 404);

      await remove(server, src);

      const dst = `rf-dst-${runtime}`;
      const restored = await post(server, `/backups/${b.id}/restore`, { sandbox: dst });
      assert.equal(restored.status, 201, await restored.clone().text());
      assert.equal(((await restored.json()) as Stored).metadata.name, dst);
      assert.equal((await post(server, `/backups/${b.id}/restore`, { sandbox: dst })).status, 409, 'the name is taken now');
      const s = await waitReady<Stored>(server, dst, runtime);
      assert.equal(s.status.image?.digest, b.imageDigest, 'the same image, by digest');
      assert.equal(s.spec.podTemplate.spec.runtimeClassName, runtime);
      assert.equal(await run(server, dst, CHECK), before);
      assert.equal(
        (await run(server, dst, 'test -e /root/after || echo absent; test -e /data/d || echo data-not-included')).trim(),
        'absent\ndata-not-included',
      );
      // Writable.
      await run(server, dst, 'echo more >> /root/proj/deep/er/seq.txt && sync');

      // A corrupt object: 422, and nothing made (no sandbox, no host directory).
      const file = join(server.dataDir, 'backups', b.key);
      const bytes = await readFile(file);
      bytes[bytes.length >> 1] ^= 0xff;
      await writeFile(file, bytes);
      const dirs = await hostSandboxIds(server.dataDir);
      const corrupt = await post(server, `/backups/${b.id}/restore`, { sandbox: `rf-corrupt-${runtime}` });
      const corruptText = await corrupt.text();
      assert.equal(corrupt.status, 422, corruptText);
      assert.match(corruptText, /corrupt/);
      assert.equal((await server.api(`${NS}/rf-corrupt-${runtime}`)).status, 404);
      assert.deepEqual(await hostSandboxIds(server.dataDir), dirs, 'no host directory left behind');

      await remove(server, dst);
      assert.equal((await server.api(`${API}/backups/${b.id}`, { method: 'DELETE' })).status, 204);
    });
  }

  test('an image no longer in the image store: 409, nothing made', async () => {
    const src = 'rf-gone';
    const created = await server.api(NS, { method: 'POST', json: sandboxBody(src) });
    assert.equal(created.status, 201);
    await waitReady(server, src, 'runc');
    const b = (await (await post(server, '/backups', { sandbox: src, rootfs: true })).json()) as Backup;
    await remove(server, src);
    // As if the image had been removed since: the record names a digest the store does not have.
    const db = new SQLite(join(server.dataDir, 'moat.db'));
    try {
      db.prepare('UPDATE backups SET image_digest = ? WHERE id = ?').run(`sha256:${'0'.repeat(64)}`, b.id);
    } finally {
      db.close();
    }
    const dirs = await hostSandboxIds(server.dataDir);
    const res = await post(server, `/backups/${b.id}/restore`, { sandbox: 'rf-gone-2' });
    const text = await res.text();
    assert.equal(res.status, 409, text);
    assert.match(text, /no longer in the image store/);
    assert.equal((await server.api(`${NS}/rf-gone-2`)).status, 404);
    assert.deepEqual(await hostSandboxIds(server.dataDir), dirs);
  });

  test('the CLI: moat backup create --sandbox NAME --rootfs, list shows the kind, restore --sandbox NEW', async () => {
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
    const src = 'rf-cli';
    assert.equal((await server.api(NS, { method: 'POST', json: sandboxBody(src) })).status, 201);
    await waitReady(server, src, 'runc');
    await run(server, src, 'echo from-cli > /root/cli.txt && sync');
    const made = await moat('backup', 'create', '--sandbox', src, '--rootfs');
    const id = /^backup (bk-[0-9a-f]{16}) of sandbox rf-cli's writable layer created: /.exec(made)?.[1];
    assert.ok(id, made);
    const listed = await moat('backup', 'list');
    assert.match(listed, /^ID\s+KIND\s+SOURCE\s/m);
    assert.match(listed, new RegExp(`^${id}\\s+rootfs\\s+rf-cli\\s`, 'm'));
    assert.match(listed, new RegExp(`^${volumeBackup.id}\\s+volume\\s+rf-vol\\s`, 'm'));
    const wrong = await runProcess(process.execPath, [CLI, 'backup', 'restore', id, '--volume', 'nope'], { env });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /not of a volume/);
    assert.match(await moat('backup', 'restore', id, '--sandbox', 'rf-cli-copy'), /^sandbox rf-cli-copy restored from bk-[0-9a-f]{16}: starting/);
    await waitReady(server, 'rf-cli-copy', 'runc');
    assert.equal(await run(server, 'rf-cli-copy', 'cat /root/cli.txt'), 'from-cli\n');
    const bad = await runProcess(process.execPath, [CLI, 'backup', 'create', '--volume', 'rf-vol', '--rootfs'], { env });
    assert.notEqual(bad.code, 0);
    for (const s of [src, 'rf-cli-copy']) await remove(server, s);
  });
});
