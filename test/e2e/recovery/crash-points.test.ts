// SIGKILL of the server at every named point of create, delete, hibernate, backup and restore (MOAT_CRASH_AT, see
// packages/server/src/faults.ts): after a restart the store and the host must agree and nothing may be left behind.
import assert from 'node:assert/strict';
import { access, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { networkKey } from '@moat/runtime';
import { until } from '../../helpers/extensions.js';
import { NS, TEST_NETWORK, hostSandboxIds, sandboxBody, sh, testRuntimes, type TestServer } from '../../helpers/server.js';
import { exited, kill, spawnServer } from '../../helpers/spawn-server.js';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

type Live = Awaited<ReturnType<typeof spawnServer>>;
interface Stored {
  metadata: { name: string; uid: string };
  status: { phase: string };
}

const list = async (server: TestServer) => ((await (await server.api('/apis/agents.x-k8s.io/v1alpha1/sandboxes')).json()) as { items: Stored[] }).items;

/**
 * The store and the host agree: every record's sandbox is where its phase says, and of the sandboxes this
 * test ever made, none that the store forgot has a directory, mount, cgroup or network namespace left.
 */
async function assertAgreement(server: TestServer, dataDir: string, seen: Set<string>) {
  const items = await list(server);
  const known = new Set(items.map((s) => s.metadata.uid));
  for (const s of items) {
    if (s.status.phase === 'Running') assert.equal((await sh(server, s.metadata.name, 'echo ok')).stdout, 'ok\n', `${s.metadata.name} answers`);
  }
  assert.deepEqual(await hostSandboxIds(dataDir), [...known].sort(), 'host state (a directory, a container) for each record and no other');
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  for (const uid of seen) {
    if (known.has(uid)) continue;
    assert.ok(!mounts.includes(uid), `no mount of forgotten sandbox ${uid}`);
    for (const c of ['memory', 'pids', 'unified']) assert.ok(!(await exists(`/sys/fs/cgroup/${c}/moat/${uid}`)), `no ${c} cgroup of ${uid}`);
    assert.ok(!(await exists(`/run/netns/${TEST_NETWORK.name}-${networkKey(uid)}`)), `no network namespace of ${uid}`);
  }
}

/** Starts a server that dies at `point`, runs `op` (its answer may never come), and starts a healthy one. */
async function crashAt(dataDir: string, point: string, op: (server: TestServer) => Promise<unknown>): Promise<Live> {
  const doomed = await spawnServer(dataDir, { MOAT_CRASH_AT: point });
  await op(doomed.server).catch(() => {}); // the connection drops with the server
  await Promise.race([exited(doomed.child), new Promise((r) => setTimeout(r, 60_000))]);
  assert.notEqual(doomed.child.signalCode, null, `the server reached ${point} and died there`);
  return spawnServer(dataDir);
}

for (const { runtime, skip } of testRuntimes())
  describe(`crash points (${runtime})`, { skip }, () => {
    let dataDir: string;
    let live: Live | undefined;
    const seen = new Set<string>();
    const create = async (server: TestServer, name: string) => {
      const res = await server.api(NS, { method: 'POST', json: sandboxBody(name, { runtime }) });
      if (res.status === 201) seen.add(((await res.json()) as Stored).metadata.uid);
    };
    const ready = async (server: TestServer, name: string) => {
      const res = await server.api(`${NS}/${name}/wait?timeoutSeconds=300`);
      assert.equal(res.status, 200, await res.clone().text());
      const s = (await res.json()) as Stored;
      seen.add(s.metadata.uid);
      return s;
    };

    before(async () => {
      dataDir = await mkdtemp(join(tmpdir(), `moat-crash-${runtime}-`));
    });
    // Each test leaves its server running (also when it fails), so the next one must stop it first.
    afterEach(async () => {
      if (live) await kill(live.child);
      live = undefined;
    });
    after(async () => {
      live = await spawnServer(dataDir);
      for (const s of await list(live.server)) await live.server.api(`${NS}/${s.metadata.name}?wait=true`, { method: 'DELETE' });
      await kill(live.child);
      await rm(dataDir, { recursive: true, force: true });
    });

    for (const point of ['create.inserted', 'start.created']) {
      test(`create, killed at ${point}: the sandbox comes up after the restart`, async () => {
        const name = `c-${point.replace('.', '-')}`;
        live = await crashAt(dataDir, point, (s) => create(s, name));
        const s = await ready(live.server, name);
        assert.equal(s.status.phase, 'Running');
        await assertAgreement(live.server, dataDir, seen);
      });
    }

    for (const point of ['delete.marked', 'teardown.destroyed', 'teardown.detached']) {
      test(`delete, killed at ${point}: the delete is finished after the restart`, async () => {
        const name = `d-${point.replace('.', '-')}`;
        live = await spawnServer(dataDir);
        await create(live.server, name);
        await ready(live.server, name);
        await kill(live.child);
        live = await crashAt(dataDir, point, (s) => s.api(`${NS}/${name}?wait=true`, { method: 'DELETE' }));
        await until('the delete to finish', async () => ((await live!.server.api(`${NS}/${name}`)).status === 404 ? true : undefined), 60_000);
        await assertAgreement(live.server, dataDir, seen);
      });
    }

    for (const point of ['hibernate.saved', 'wake.restored']) {
      test(`hibernate and wake, killed at ${point}: the sandbox is consistent and usable after the restart`, async () => {
        const name = `h-${point.replace('.', '-')}`;
        live = await spawnServer(dataDir);
        await create(live.server, name);
        await ready(live.server, name);
        await sh(live.server, name, 'echo kept > /data/f');
        if (point === 'wake.restored') assert.equal((await live.server.api(`${NS}/${name}/hibernate`, { method: 'POST' })).status, 200);
        await kill(live.child);
        const action = point === 'hibernate.saved' ? 'hibernate' : 'wake';
        live = await crashAt(dataDir, point, (s) => s.api(`${NS}/${name}/${action}`, { method: 'POST' }));
        const phase = ((await (await live.server.api(`${NS}/${name}`)).json()) as Stored).status.phase;
        // A checkpoint that completed makes the record Hibernated; a runtime that fell back (stopped with its disks)
        // left nothing to restore, so the sandbox is started again on its disks: Running, as if not hibernated.
        const want = point === 'wake.restored' ? ['Running'] : ['Hibernated', 'Running'];
        assert.ok(want.includes(phase), `the record follows what the host did: ${phase}`);
        assert.equal((await sh(live.server, name, 'cat /data/f')).stdout, 'kept\n', 'usable, with its data');
        await assertAgreement(live.server, dataDir, seen);
      });
    }

    // Backups of a named volume: an object written before the crash, with or without its record, is removed at start,
    // a frozen filesystem is thawed, and a restore cut short leaves no volume and no image behind.
    for (const point of ['backup.writing', 'backup.stored', 'restore.written']) {
      test(`backup and restore, killed at ${point}: nothing half-made remains and the volume works`, async () => {
        const name = `b-${point.replace('.', '-')}`;
        const body = sandboxBody(name, { runtime });
        Object.assign(body.spec, { volumeClaimTemplates: [{ metadata: { name: 'data' }, spec: { resources: { requests: { storage: '64Mi' } } } }] });
        live = await spawnServer(dataDir);
        const res = await live.server.api(NS, { method: 'POST', json: body });
        assert.equal(res.status, 201, await res.clone().text());
        await ready(live.server, name);
        const sum = (await sh(live.server, name, 'head -c 2000000 /dev/urandom > /data/blob; sha256sum /data/blob')).stdout;
        const backups = '/apis/moat.dev/v1/namespaces/default/backups';
        const listBackups = async (server: TestServer) => ((await (await server.api(backups)).json()) as { items: { id: string }[] }).items;
        const kept =
          point === 'restore.written'
            ? ((await (await live.server.api(backups, { method: 'POST', json: { volume: `data-${name}` } })).json()) as { id: string })
            : undefined;
        await kill(live.child);
        live = await crashAt(dataDir, point, (s) =>
          kept
            ? s.api(`${backups}/${kept.id}/restore`, { method: 'POST', json: { volume: `restored-${name}` } })
            : s.api(backups, { method: 'POST', json: { volume: `data-${name}` } }),
        );
        assert.deepEqual(
          (await listBackups(live.server)).map((b) => b.id),
          kept ? [kept.id] : [],
          'only complete backups are listed',
        );
        const objects = (await readdir(join(dataDir, 'backups', 'default')).catch(() => [] as string[])).sort();
        assert.deepEqual(objects, kept ? [`${kept.id}.img.zst`] : [], 'no object without a complete record');
        if (kept) assert.equal((await live.server.api(`/apis/moat.dev/v1/namespaces/default/volumes/restored-${name}`)).status, 404);
        const volumes = ((await (await live.server.api('/apis/moat.dev/v1/namespaces/default/volumes')).json()) as { items: { uid: string }[] }).items;
        assert.deepEqual((await readdir(join(dataDir, 'volumes'))).sort(), volumes.map((v) => `${v.uid}.img`).sort(), 'an image for each volume and no other');
        assert.equal((await sh(live.server, name, 'echo more > /data/after && sha256sum /data/blob')).stdout, sum, 'the volume is thawed and whole');
        await assertAgreement(live.server, dataDir, seen);
      });
    }

    // Backups of a sandbox's writable layer (rootfs), restored into a new sandbox: the same points, and restore.staged
    // (the verified disk in the new sandbox's directory, no record yet). A disk frozen for the copy (runc, gVisor) is
    // thawed and a microVM stopped for it continues after the restart; a restore cut short leaves no sandbox and no
    // host directory (the orphan is removed at start).
    for (const point of ['backup.writing', 'backup.stored', 'restore.written', 'restore.staged']) {
      test(`rootfs backup and restore, killed at ${point}: nothing half-made remains and the sandbox works`, async () => {
        const name = `r-${point.replace('.', '-')}`;
        const backups = '/apis/moat.dev/v1/namespaces/default/backups';
        const listBackups = async (server: TestServer) =>
          ((await (await server.api(backups)).json()) as { items: { id: string }[] }).items.map((b) => b.id).sort();
        const objects = async () => (await readdir(join(dataDir, 'backups', 'default')).catch(() => [] as string[])).sort();
        live = await spawnServer(dataDir);
        await create(live.server, name);
        await ready(live.server, name);
        const sum = (await sh(live.server, name, 'head -c 2000000 /dev/urandom > /root/blob; sha256sum /root/blob')).stdout;
        const kept = point.startsWith('restore.')
          ? ((await (await live.server.api(backups, { method: 'POST', json: { sandbox: name, rootfs: true } })).json()) as { id: string })
          : undefined;
        const [listed, stored] = [await listBackups(live.server), await objects()];
        await kill(live.child);
        live = await crashAt(dataDir, point, (s) =>
          kept
            ? s.api(`${backups}/${kept.id}/restore`, { method: 'POST', json: { sandbox: `${name}-copy` } })
            : s.api(backups, { method: 'POST', json: { sandbox: name, rootfs: true } }),
        );
        assert.deepEqual(await listBackups(live.server), listed, 'only complete backups are listed');
        assert.deepEqual(await objects(), stored, 'no object without a complete record');
        if (kept) assert.equal((await live.server.api(`${NS}/${name}-copy`)).status, 404, 'no restored sandbox');
        assert.equal((await sh(live.server, name, 'echo more > /root/after && sha256sum /root/blob')).stdout, sum, 'the writable layer is thawed and whole');
        await assertAgreement(live.server, dataDir, seen);
        if (kept) assert.equal((await live.server.api(`${backups}/${kept.id}`, { method: 'DELETE' })).status, 204);
      });
    }
  });
