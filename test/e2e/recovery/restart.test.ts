import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:http';
import { after, describe, test } from 'node:test';
import { networkKey } from '@moat/runtime';
import Database from 'better-sqlite3';
import { NS, TEST_NETWORK, createReady, sh, type TestServer } from '../../helpers/server.js';
import { EXT, poolBody, poolMembers, poolReady, until } from '../../helpers/extensions.js';
import { kill, spawnServer } from '../../helpers/spawn-server.js';

describe('control-plane crash recovery', () => {
  let dataDir: string;
  let live: { child: ChildProcess; server: TestServer } | undefined;
  after(async () => {
    if (live) {
      await live.server.api(`${NS}/keep?wait=true`, { method: 'DELETE' });
      await kill(live.child);
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  test('SIGKILL of the server: sandboxes keep running and are re-adopted; orphans are removed', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'moat-restart-'));
    live = await spawnServer(dataDir);
    let { child, server } = live;
    await createReady(server, 'keep');
    const orphan = await createReady(server, 'orphan');
    await sh(server, 'keep', "echo state > /data/f; nohup sh -c 'echo $$ > /tmp/loop.pid; while true; do sleep 1; done' >/dev/null 2>&1 &");
    await new Promise((r) => setTimeout(r, 200));
    const alive = 'kill -0 $(cat /tmp/loop.pid) && cat /tmp/loop.pid';
    const before = (await sh(server, 'keep', alive)).stdout.trim();
    assert.match(before, /^\d+$/);

    await kill(child);
    live = undefined;
    // A record lost with the crash: its sandbox is now an orphan that nothing points to.
    const db = new Database(join(dataDir, 'moat.db'));
    db.prepare('DELETE FROM sandboxes WHERE name = ?').run('orphan');
    db.close();

    live = await spawnServer(dataDir);
    ({ child, server } = live);
    const s = (await (await server.api(`${NS}/keep`)).json()) as any;
    assert.equal(s.status.phase, 'Running');
    const afterPid = (await sh(server, 'keep', `${alive}; cat /data/f`)).stdout;
    assert.equal(afterPid, `${before}\nstate\n`, 'the same process is still running, /data intact');

    const orphanDir = join(dataDir, 'sandboxes', orphan.metadata.uid);
    await assert.rejects(access(orphanDir), 'orphan directory removed');
    assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(orphan.metadata.uid), 'orphan mounts removed');
    const list = spawn('runc', ['--root', join(dataDir, 'runtime', 'runc'), 'list', '-q']);
    let ids = '';
    list.stdout.on('data', (d) => (ids += d));
    await new Promise((r) => list.on('close', r));
    assert.ok(!ids.includes(orphan.metadata.uid), 'orphan container removed');
  });
});

describe('warm pools across a control-plane crash', () => {
  let dataDir: string;
  let live: { child: ChildProcess; server: TestServer } | undefined;
  after(async () => {
    if (live) {
      await live.server.api(`${EXT}/sandboxwarmpools/refill?wait=true`, { method: 'DELETE' });
      await kill(live.child);
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  test('SIGKILL while a pool replenishes: after restart it converges to its size, with nothing left behind', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'moat-pool-restart-'));
    live = await spawnServer(dataDir);
    const created = await live.server.api(`${EXT}/sandboxwarmpools`, { method: 'POST', json: poolBody('refill', 'base', 4) });
    assert.equal(created.status, 201);
    await until('the pool to have started filling', async () => ((await poolMembers(live!.server, 'refill')).length > 0 ? true : undefined), 10_000);
    await kill(live.child); // mid-fill: some members Pending, some maybe Running
    live = await spawnServer(dataDir);
    const { server } = live;
    await poolReady(server, 'refill', 4);
    const members = await poolMembers(server, 'refill');
    assert.equal(members.length, 4);
    // Host state exactly matches the records: no orphan directory, container or pool member beyond 4.
    await until(
      'host state to match records',
      async () => {
        const dirs = (await readdir(join(dataDir, 'sandboxes'))).sort();
        return JSON.stringify(dirs) === JSON.stringify(members.map((m) => m.metadata.uid).sort()) ? true : undefined;
      },
      10_000,
    );
  });
});

describe('networks across a control-plane crash', () => {
  let dataDir: string;
  let live: { child: ChildProcess; server: TestServer } | undefined;
  const upstream = createServer((req, res) => res.end(`upstream saw ${req.url}`));
  after(async () => {
    if (live) {
      await live.server.api(`${NS}/net?wait=true`, { method: 'DELETE' });
      await kill(live.child);
    }
    upstream.close();
    delete process.env.MOAT_EGRESS_HOSTS;
    await rm(dataDir, { recursive: true, force: true });
  });

  test('SIGKILL: after restart the policy is still enforced and no namespace, veth or lease is left behind', async () => {
    const port = await new Promise<number>((resolve) => upstream.listen(0, '127.0.0.1', () => resolve((upstream.address() as { port: number }).port)));
    process.env.MOAT_EGRESS_HOSTS = 'allowed.test=127.0.0.1,denied.test=127.0.0.1';
    dataDir = await mkdtemp(join(tmpdir(), 'moat-net-restart-'));
    live = await spawnServer(dataDir);
    const policy = { mode: 'allow-list', rules: [{ action: 'allow', host: 'allowed.test' }] };
    for (const name of ['net', 'orphan']) {
      const body = { metadata: { name }, spec: { podTemplate: { spec: { containers: [{ image: 'base' }] } }, egressPolicy: policy } };
      assert.equal((await live.server.api(NS, { method: 'POST', json: body })).status, 201);
      assert.equal((await live.server.api(`${NS}/${name}/wait?timeoutSeconds=60`)).status, 200);
    }
    const probe = `curl -s --max-time 10 http://allowed.test:${port}/a; echo; curl -s --max-time 10 -o /dev/null -w '%{http_code}' http://denied.test:${port}/`;
    assert.equal((await sh(live.server, 'net', probe)).stdout, 'upstream saw /a\n403');
    const orphanUid = ((await (await live.server.api(`${NS}/orphan`)).json()) as { metadata: { uid: string } }).metadata.uid;

    await kill(live.child);
    live = undefined;
    const db = new Database(join(dataDir, 'moat.db'));
    db.prepare('DELETE FROM sandboxes WHERE name = ?').run('orphan');
    db.close();

    live = await spawnServer(dataDir);
    assert.equal((await sh(live.server, 'net', probe)).stdout, 'upstream saw /a\n403', 'the policy holds after the restart');
    const netUid = ((await (await live.server.api(`${NS}/net`)).json()) as { metadata: { uid: string } }).metadata.uid;
    const namespaces = (await readdir('/run/netns')).filter((n) => n.startsWith(`${TEST_NETWORK.name}-`));
    assert.deepEqual(namespaces, [`${TEST_NETWORK.name}-${networkKey(netUid)}`]);
    const veths = (await readdir('/sys/class/net')).filter((n) => n.startsWith(TEST_NETWORK.ifPrefix));
    assert.deepEqual(veths, [`${TEST_NETWORK.ifPrefix}${networkKey(netUid)}`]);
    assert.ok(!veths.some((v) => v.includes(networkKey(orphanUid))));
    const leases = new Database(join(dataDir, 'moat.db')).prepare('SELECT sandbox_uid FROM network_leases').all() as { sandbox_uid: string }[];
    assert.deepEqual(
      leases.map((l) => l.sandbox_uid),
      [netUid],
    );
  });
});
