import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { USERNS_HOST_BASE, USERNS_SIZE } from '@moat/runtime';
import { NS, createReady, sh, startTestServer, type TestServer } from '../../helpers/server.js';
import { ready, remove, run, withClaim } from '../../helpers/volumes.js';

const VOLUMES = '/apis/moat.dev/v1/namespaces/default/volumes';

/**
 * Every sandbox runs as its own host id range, while the image's layers and
 * the disks keep one canonical range on disk that no sandbox runs as.
 */
describe('per-sandbox host ids (runc)', () => {
  let server: TestServer;
  const uids: Record<string, string> = {};

  before(async () => {
    server = await startTestServer();
    for (const name of ['ids-a', 'ids-b']) uids[name] = (await createReady(server, name)).metadata.uid;
  });
  after(() => server?.close());

  /** The host uid sandbox `name`'s root runs as: from its uid_map, checked against its init's host credentials. */
  async function hostRoot(name: string): Promise<number> {
    const map = (await sh(server, name, 'cat /proc/self/uid_map')).stdout.trim().split(/\s+/).map(Number);
    assert.deepEqual([map[0], map[2]], [0, USERNS_SIZE], `one range of ${USERNS_SIZE} ids: ${map.join(' ')}`);
    const state = JSON.parse(await readFile(join(server.dataDir, 'runtime/runc', uids[name]!, 'state.json'), 'utf8')) as { init_process_pid: number };
    const status = await readFile(`/proc/${state.init_process_pid}/status`, 'utf8');
    assert.equal(Number(/^Uid:\s+(\d+)/m.exec(status)![1]), map[1], 'its init runs as that uid on the host');
    return map[1]!;
  }

  test('two sandboxes run as different host ids, none of them the canonical range', async () => {
    const [a, b] = [await hostRoot('ids-a'), await hostRoot('ids-b')];
    assert.notEqual(a, b);
    assert.ok(Math.abs(a - b) >= USERNS_SIZE, 'the ranges do not overlap');
    for (const base of [a, b]) assert.ok(base >= USERNS_HOST_BASE + USERNS_SIZE, `${base} is not the canonical range`);
  });

  test("a file one sandbox creates is not owned, on the host, by the other's ids", async () => {
    const [a, b] = [await hostRoot('ids-a'), await hostRoot('ids-b')];
    await run(server, 'ids-a', 'echo mine > /root/owned && chown 1000:1000 /root/owned && stat -c %u /etc/passwd');
    const dir = join(server.dataDir, 'sandboxes', uids['ids-a']!);
    // As the host sees it through the sandbox's rootfs: in a's range.
    assert.equal((await stat(join(dir, 'bundle/rootfs/root/owned'))).uid, a + 1000);
    // On the disk itself: the canonical range, which neither sandbox runs as.
    const onDisk = await stat(join(dir, 'disk/upper/root/owned'));
    assert.equal(onDisk.uid, USERNS_HOST_BASE + 1000);
    assert.ok(onDisk.uid < b || onDisk.uid >= b + USERNS_SIZE, "not in b's range");
    // The shared image files are root's in each sandbox, without a copy or a chown.
    for (const name of ['ids-a', 'ids-b']) assert.equal((await run(server, name, 'stat -c %u:%g /etc/passwd')).trim(), '0:0');
    assert.equal((await stat(join(server.dataDir, 'sandboxes', uids['ids-b']!, 'bundle/rootfs/etc/passwd'))).uid, b);
  });

  test('a named volume keeps its owners from one sandbox to the next', async () => {
    const res = await server.api(VOLUMES, { method: 'POST', json: { name: 'ids-shared', size: '64Mi' } });
    assert.equal(res.status, 201, await res.text());
    await ready(server, withClaim('ids-writer', 'runc', 'ids-shared'), 'runc');
    await run(server, 'ids-writer', 'echo hi > /data/by-user && chown 1000:1000 /data/by-user');
    await remove(server, 'ids-writer');
    await ready(server, withClaim('ids-reader', 'runc', 'ids-shared'), 'runc');
    assert.equal((await run(server, 'ids-reader', 'stat -c %u:%g /data/by-user')).trim(), '1000:1000', 'not nobody');
    await remove(server, 'ids-reader');
  });

  test("a deleted sandbox's range is free again, and only then", async () => {
    const a = await hostRoot('ids-a');
    await createReady(server, 'ids-c');
    uids['ids-c'] = ((await (await server.api(`${NS}/ids-c`)).json()) as { metadata: { uid: string } }).metadata.uid;
    assert.notEqual(await hostRoot('ids-c'), a, 'a live sandbox keeps its range');
    // Hibernate and wake: the same range again.
    const c = await hostRoot('ids-c');
    assert.equal((await server.api(`${NS}/ids-c/hibernate`, { method: 'POST' })).status, 200);
    assert.equal((await server.api(`${NS}/ids-c/wake`, { method: 'POST' })).status, 200);
    await server.api(`${NS}/ids-c/wait?timeoutSeconds=60`);
    assert.equal(await hostRoot('ids-c'), c, 'a hibernated sandbox keeps its range');
    await remove(server, 'ids-a');
    uids['ids-d'] = (await createReady(server, 'ids-d')).metadata.uid;
    assert.equal(await hostRoot('ids-d'), a, 'the lowest free range, once its sandbox is gone');
  });

  test('inotify instances and processes exhausted in one sandbox leave the other working', async () => {
    // The hog holds every inotify instance its uid may have (the kernel's per-uid limit) and 150 processes.
    const hog = `import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while n < 100000 and libc.inotify_init() >= 0: n += 1
open("/tmp/hog", "w").write("%d %d" % (n, ctypes.get_errno()))
time.sleep(120)`;
    await run(
      server,
      'ids-b',
      `cat > /tmp/hog.py <<'EOF'\n${hog}\nEOF\nnohup python3 /tmp/hog.py >/dev/null 2>&1 &\nfor i in $(seq 150); do nohup sleep 120 >/dev/null 2>&1 & done`,
    );
    const held = (await run(server, 'ids-b', 'for i in $(seq 100); do [ -s /tmp/hog ] && break; sleep 0.1; done; cat /tmp/hog')).split(' ').map(Number);
    assert.ok(held[0]! >= 1 && held[1] === 24, `the hog ran out of instances (EMFILE) after ${held[0]}`);
    assert.equal(
      (await run(server, 'ids-d', `python3 -c "import ctypes; print(ctypes.CDLL(None).inotify_init() >= 0)"`)).trim(),
      'True',
      'inotify_init works elsewhere',
    );
    // RLIMIT_NPROC counts every process of a host uid: the hog's 150 are not the other sandbox's.
    assert.equal((await run(server, 'ids-d', 'ulimit -u 100; for i in $(seq 30); do sleep 0.2 & done; wait; echo forked')).trim(), 'forked');
    await sh(server, 'ids-b', 'pkill -f hog.py; pkill sleep; true');
  });
});

/**
 * The density the per-sandbox ids are for: more sandboxes than the kernel's
 * per-uid defaults would allow one uid (200 keyrings: runc makes one per
 * container), and one sandbox that exhausts what it may have leaves the rest
 * working.
 */
describe('300 sandboxes on one host (runc)', () => {
  const COUNT = 300;
  let server: TestServer;
  const names = Array.from({ length: COUNT }, (_, i) => `many-${i}`);

  before(async () => {
    server = await startTestServer();
  });
  after(() => server?.close());

  /** Runs `fn` over every name, `width` at a time. */
  async function each(width: number, fn: (name: string) => Promise<void>): Promise<void> {
    let next = 0;
    await Promise.all(
      Array.from({ length: width }, async () => {
        while (next < names.length) await fn(names[next++]!);
      }),
    );
  }

  test('all start and exec; one that exhausts inotify and processes leaves the others working', { timeout: 900_000 }, async () => {
    await each(8, async (name) => {
      const res = await server.api(NS, {
        method: 'POST',
        json: {
          metadata: { name },
          spec: { podTemplate: { spec: { containers: [{ name: 'main', image: 'base', resources: { limits: { memory: '64Mi' } } }] } } },
        },
      });
      assert.equal(res.status, 201, await res.text());
    });
    await each(8, async (name) => {
      const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=300`);
      assert.equal(wait.status, 200, `${name}: ${await wait.text()}`);
      assert.equal((await run(server, name, 'echo $HOSTNAME')).trim(), name);
    });
    const hog = names[0]!;
    await run(
      server,
      hog,
      `nohup python3 -c "
import ctypes, time
libc = ctypes.CDLL(None)
while libc.inotify_init() >= 0: pass
open('/tmp/hog', 'w').write('full')
time.sleep(300)" >/dev/null 2>&1 &
for i in $(seq 150); do nohup sleep 300 >/dev/null 2>&1 & done`,
    );
    assert.equal((await run(server, hog, 'for i in $(seq 100); do [ -s /tmp/hog ] && break; sleep 0.1; done; cat /tmp/hog')).trim(), 'full');
    names.shift();
    await each(8, async (name) => {
      const out = await run(
        server,
        name,
        `ulimit -u 100; python3 -c "import ctypes, os; ok = ctypes.CDLL(None).inotify_init() >= 0; pid = os.fork(); pid or os._exit(0); os.waitpid(pid, 0); print(ok, 'forked')"`,
      );
      assert.equal(out.trim(), 'True forked', name);
    });
  });
});
