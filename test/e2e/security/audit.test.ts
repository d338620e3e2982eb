import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import SQLite from 'better-sqlite3';
import WebSocket from 'ws';
import { eventHash } from '../../../packages/server/src/audit/log.js';
import { until } from '../../helpers/extensions.js';
import { NS, createReady, sh, startTestServer, type TestServer } from '../../helpers/server.js';

const V1 = '/apis/moat.dev/v1';
const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');

type Event = {
  seq: number;
  action: string;
  result: string;
  actor: { user?: string; keyId?: string; source: string };
  namespace: string;
  sandbox: string;
  object: string;
  detail: any;
};

describe('audit log', () => {
  let server: TestServer;
  let bobKey: string;
  let db: SQLite.Database;

  const events = async (query = '', key?: string) => {
    const res = await server.api(`${V1}/audit${query}`, key ? { headers: { authorization: `Bearer ${key}` } } : {});
    assert.equal(res.status, 200);
    return ((await res.json()) as { items: Event[] }).items;
  };
  const verify = async () =>
    (await (await server.api(`${V1}/audit/verify`)).json()) as { ok: boolean; events: number; checkpoints: number; brokenAt?: number; reason?: string };
  /** Events are written once their response is done; wait for the one a test looks for. */
  const eventually = (what: string, match: (e: Event) => boolean, query = '') => until(what, async () => (await events(query)).find(match), 10_000);

  before(async () => {
    server = await startTestServer();
    bobKey = ((await (await server.api(`${V1}/users`, { method: 'POST', json: { name: 'bob', role: 'member' } })).json()) as { key: { key: string } }).key.key;
    await createReady(server, 'audited');
    db = new SQLite(join(server.dataDir, 'moat.db'));
  });
  after(async () => {
    db.close();
    await server.close();
  });

  test('mutations, execs, file writes and egress decisions are events with actor, object and result', async () => {
    const created = await eventually('the create', (e) => e.action === 'POST sandboxes');
    assert.equal(created.actor.user, 'admin');
    assert.equal(created.actor.source, '127.0.0.1');
    assert.match(created.actor.keyId!, /^[0-9a-f]{12}$/);
    assert.equal(created.namespace, 'default');
    assert.equal(created.result, 'success');
    assert.equal(created.detail.status, 201);

    await sh(server, 'audited', 'exit 3');
    const exec = await eventually('the exec', (e) => e.action === 'POST sandboxes/{name}/exec');
    assert.deepEqual(exec.detail.command, ['/bin/sh', '-c', 'exit 3']);
    assert.equal(exec.detail.exitCode, 3);
    assert.equal(typeof exec.detail.durationMs, 'number');
    assert.equal(exec.sandbox, 'audited');

    // An interactive exec is a WebSocket upgrade (a GET), recorded when it ends.
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}${NS}/audited/exec/ws`, { headers: { authorization: `Bearer ${server.adminKey}` } });
    await new Promise((done) => ws.once('open', done));
    ws.send(JSON.stringify({ command: ['sh', '-c', 'exit 4'] }));
    await new Promise((done) => ws.once('close', done));
    const interactive = await eventually('the WebSocket exec', (e) => e.action === 'GET sandboxes/{name}/exec/ws');
    assert.deepEqual([interactive.detail.command, interactive.detail.exitCode, interactive.result], [['sh', '-c', 'exit 4'], 4, 'success']);

    await server.api(`${NS}/audited/files/content?path=/tmp/secret-plan.txt`, { method: 'PUT', body: 'the body is not recorded' });
    const write = await eventually('the file write', (e) => e.action === 'PUT sandboxes/{name}/files/content');
    assert.equal(write.detail.query.path, '/tmp/secret-plan.txt');
    assert.equal(write.object, 'sandboxes/audited/files/content');
    assert.ok(!JSON.stringify(await events()).includes('the body is not recorded'));

    const r = await sh(server, 'audited', "curl -s -o /dev/null -w '%{http_code}' http://blocked.example.test/x");
    assert.equal(r.stdout, '403');
    const egress = await eventually('the egress decision', (e) => e.action === 'egress');
    assert.equal(egress.result, 'denied');
    assert.equal(egress.object, 'GET blocked.example.test:80/x');
    assert.equal(egress.sandbox, 'audited');
    assert.equal(egress.actor.user, 'admin', "on behalf of the sandbox's owner");
  });

  test('denied actions are audited: another tenant, a viewer write, a bad key', async () => {
    const res = await fetch(`${server.url}${NS}/audited`, { method: 'DELETE', headers: { authorization: `Bearer ${bobKey}` } });
    assert.equal(res.status, 404);
    const denied = await eventually('bob denied', (e) => e.actor.user === 'bob' && e.action === 'DELETE sandboxes/{name}');
    assert.equal(denied.result, 'denied');
    assert.equal(denied.detail.status, 404);

    const vera = ((await (await server.api(`${V1}/users`, { method: 'POST', json: { name: 'vera', role: 'viewer' } })).json()) as { key: { key: string } }).key
      .key;
    const write = await fetch(`${server.url}/apis/agents.x-k8s.io/v1alpha1/namespaces/vera/sandboxes/x`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${vera}` },
    });
    assert.equal(write.status, 403);
    const viewer = await eventually('the viewer write', (e) => e.actor.user === 'vera');
    assert.deepEqual([viewer.result, viewer.namespace, viewer.detail.status], ['denied', 'vera', 403]);

    const read = await fetch(`${server.url}${NS}/audited`, { headers: { authorization: `Bearer ${bobKey}` } });
    assert.equal(read.status, 404);
    await eventually('bob denied a read', (e) => e.actor.user === 'bob' && e.action === 'GET sandboxes/{name}' && e.result === 'denied');

    await fetch(`${server.url}${NS}`, { headers: { authorization: 'Bearer moat_0123456789ab_forged' } });
    const forged = await eventually('the bad key', (e) => e.actor.keyId === '0123456789ab');
    assert.equal(forged.result, 'denied');
    assert.equal(forged.actor.user, undefined);
  });

  test('query by sandbox, actor, action and time; members see their own; export is JSON Lines', async () => {
    const bySandbox = await events('?namespace=default&sandbox=audited');
    assert.ok(bySandbox.length >= 3 && bySandbox.every((e) => e.sandbox === 'audited'));
    assert.ok((await events('?user=bob')).every((e) => e.actor.user === 'bob'));
    const execs = await events(`?action=${encodeURIComponent('POST sandboxes/{name}/exec')}`);
    assert.ok(execs.length >= 1 && execs.every((e) => e.action === 'POST sandboxes/{name}/exec'));
    assert.deepEqual(await events(`?since=${new Date(Date.now() + 60_000).toISOString()}`), []);
    const bobs = await events('', bobKey);
    assert.ok(bobs.length >= 2 && bobs.every((e) => e.actor.user === 'bob'), 'bob sees only his own events');
    assert.equal((await fetch(`${server.url}${V1}/audit/verify`, { headers: { authorization: `Bearer ${bobKey}` } })).status, 403);

    const res = await server.api(`${V1}/audit/export?sandbox=audited`);
    assert.match(res.headers.get('content-type')!, /jsonl/);
    const lines = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Event);
    assert.deepEqual(lines, await events('?sandbox=audited'));
  });

  test('verify finds an edited, a deleted, a reordered event and a rewritten chain, and says where', async () => {
    // Enough events for a signed checkpoint.
    await Promise.all(Array.from({ length: 110 }, () => server.api(`${NS}/ghost`, { method: 'DELETE' })));
    await until('a checkpoint', async () => ((await verify()).checkpoints >= 1 ? true : undefined), 10_000);
    const clean = await verify();
    assert.equal(clean.ok, true, clean.reason);
    // Checkpoints come every 100 events and after a quiet minute: the first one covering event 10, and the last.
    const checkpoints = (db.prepare('SELECT seq FROM audit_checkpoints ORDER BY seq').all() as { seq: number }[]).map((c) => c.seq);
    const checkpoint = checkpoints.find((seq) => seq >= 10)!;
    const lastCheckpoint = checkpoints.at(-1)!;

    const rows = () => db.prepare('SELECT * FROM audit_events ORDER BY seq').all() as Record<string, any>[];
    const original = rows();
    const restore = () => {
      db.prepare('DELETE FROM audit_events WHERE seq <= ?').run(original.length);
      const insert = db.prepare(
        `INSERT INTO audit_events (${Object.keys(original[0]!).join(', ')}) VALUES (${Object.keys(original[0]!)
          .map((k) => `@${k}`)
          .join(', ')})`,
      );
      for (const r of original) insert.run(r);
    };
    const expectBroken = async (at: number, reason: RegExp) => {
      const r = await verify();
      assert.equal(r.ok, false);
      assert.equal(r.brokenAt, at, r.reason);
      assert.match(r.reason!, reason);
      restore();
      assert.equal((await verify()).ok, true, 'restored');
    };

    db.prepare(`UPDATE audit_events SET detail = '{"status":200}' WHERE seq = 5`).run();
    await expectBroken(5, /event 5 was altered/);

    db.prepare('DELETE FROM audit_events WHERE seq = 7').run();
    await expectBroken(7, /event 7 is missing/);

    // Swap the contents of events 8 and 9, sequence numbers kept: the order changed.
    const [e8, e9] = [original[7]!, original[8]!];
    const swap = db.prepare(
      'UPDATE audit_events SET time = @time, action = @action, object = @object, detail = @detail, prev_hash = @prev_hash, hash = @hash WHERE seq = @seq',
    );
    swap.run({ ...e9, seq: 8 });
    swap.run({ ...e8, seq: 9 });
    await expectBroken(8, /event 8 does not follow event 7/);

    // Edit event 10 and recompute every hash after it: only the signed checkpoint can tell.
    let prev = original[8]!.hash as string;
    const rehash = db.prepare('UPDATE audit_events SET detail = @detail, prev_hash = @prev_hash, hash = @hash WHERE seq = @seq');
    for (const r of original.slice(9)) {
      const forged: Record<string, any> = { ...r, detail: r.seq === 10 ? '{"status":204}' : r.detail, prev_hash: prev };
      const { hash: _old, ...fields } = forged;
      prev = eventHash(fields as never);
      rehash.run({ ...forged, hash: prev });
    }
    await expectBroken(checkpoint, new RegExp(`up to event ${checkpoint} was rewritten`));

    // Cut the tail off, checkpointed events included.
    db.prepare('DELETE FROM audit_events WHERE seq >= ?').run(lastCheckpoint - 1);
    await expectBroken(lastCheckpoint - 1, new RegExp(`events ${lastCheckpoint - 1} to ${lastCheckpoint} were removed`));
  });

  test('moat audit list --sandbox and verify (exit code 1 on a broken chain)', async () => {
    const moat = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, ...args], {
          env: { PATH: process.env.PATH ?? '', HOME: '/nonexistent', MOAT_URL: server.url, MOAT_API_KEY: server.adminKey },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
      });
    const list = await moat(['audit', 'list', '--sandbox', 'audited', '-o', 'json']);
    assert.equal(list.code, 0, list.stderr);
    const items = JSON.parse(list.stdout).items as Event[];
    assert.ok(items.length >= 3 && items.every((e) => e.sandbox === 'audited' && e.namespace === 'default'));
    const ok = await moat(['audit', 'verify']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /audit log intact: \d+ events/);
    db.prepare(`UPDATE audit_events SET result = 'tampered' WHERE seq = 3`).run();
    const broken = await moat(['audit', 'verify']);
    assert.equal(broken.code, 1);
    assert.match(broken.stderr, /BROKEN at event 3: event 3 was altered/);
  });
});
