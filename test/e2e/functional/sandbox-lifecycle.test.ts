import assert from 'node:assert/strict';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { NS, createReady, execApi, sh, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';

/** Where each runtime keeps its sandboxes' host state. */
const SANDBOX_DIRS: Record<string, string> = { runc: 'sandboxes', gvisor: 'sandboxes-gvisor', microvm: 'sandboxes-microvm' };

for (const { runtime, skip } of testRuntimes())
  describe(`sandbox lifecycle, exec and files (${runtime})`, { skip }, () => {
    let server: TestServer;
    let uid: string;
    before(async () => {
      server = await startTestServer();
      uid = (await createReady(server, 'life', { runtime, env: { GREETING: 'hi' }, labels: { team: 'a' } })).metadata.uid;
    });
    after(() => server.close());

    test('a created sandbox is Running with Ready=True, its image digest and runtime', async () => {
      const s = (await (await server.api(`${NS}/life`)).json()) as any;
      assert.equal(s.status.phase, 'Running');
      assert.equal(s.status.conditions.find((c: any) => c.type === 'Ready').status, 'True');
      assert.match(s.status.image.digest, /^sha256:[0-9a-f]{64}$/);
      assert.equal(s.status.runtimeClassName, runtime);
      assert.ok(s.status.resourceUsage.memoryBytes > 0, 'usage is read from the cgroup');
      assert.ok(s.status.resourceUsage.pids >= 1);
    });

    test('list filters by label selector', async () => {
      const all = (await (await server.api(NS)).json()) as any;
      assert.ok(all.items.some((s: any) => s.metadata.name === 'life'));
      const none = (await (await server.api(`${NS}?labelSelector=team%3Db`)).json()) as any;
      assert.equal(none.items.length, 0);
      const some = (await (await server.api(`${NS}?labelSelector=team%3Da`)).json()) as any;
      assert.deepEqual(
        some.items.map((s: any) => s.metadata.name),
        ['life'],
      );
    });

    test('exec returns stdout, stderr and the exit code', async () => {
      const r = await execApi(server, 'life', { command: ['python3', '-c', 'import sys; print(1); print("e", file=sys.stderr); sys.exit(3)'] });
      assert.equal(r.stdout, '1\n');
      assert.equal(r.stderr, 'e\n');
      assert.equal(r.exit!.exitCode, 3);
      assert.equal(r.exit!.timedOut, false);
    });

    test('exec gets the sandbox env, request env, cwd, user and stdin', async () => {
      const r = await sh(server, 'life', 'echo "$GREETING $EXTRA $(pwd) $(id -un)"; cat', {
        env: { EXTRA: 'x' },
        cwd: '/tmp',
        user: 'user',
        stdin: 'from-stdin',
      });
      assert.equal(r.stdout, 'hi x /tmp user\nfrom-stdin');
      assert.equal(r.exit!.exitCode, 0);
    });

    test('a timed-out command is killed and reported as such', async () => {
      const t0 = Date.now();
      const r = await sh(server, 'life', 'sleep 30', { timeoutSeconds: 0.5 });
      assert.equal(r.exit!.timedOut, true);
      assert.equal(r.exit!.signal, 'SIGKILL');
      assert.equal(r.exit!.exitCode, 137);
      assert.ok(Date.now() - t0 < 10_000);
    });

    test('a command killed by a signal reports it', async () => {
      const r = await sh(server, 'life', 'kill -TERM $$');
      assert.equal(r.exit!.signal, 'SIGTERM');
      assert.equal(r.exit!.exitCode, 143);
    });

    test('a missing program ends the stream with a NotFound error', async () => {
      const r = await execApi(server, 'life', { command: ['/no/such/program'] });
      assert.equal(r.exit!.type, 'error');
      assert.equal(r.exit!.reason, 'NotFound');
      assert.match(String(r.exit!.message), /no\/such\/program/);
    });

    test('files: write, read, stat, list, mkdir, rename, remove', async () => {
      const base = `${NS}/life/files`;
      const data = Buffer.from([0, 1, 2, 255, 10, 13]);
      let res = await server.api(`${base}/content?path=/workspace/a/b.bin`, {
        method: 'PUT',
        body: data,
        headers: { 'content-type': 'application/octet-stream' },
      });
      assert.equal(res.status, 200, await res.clone().text());
      const entry = (await res.json()) as any;
      assert.equal(entry.path, '/workspace/a/b.bin');
      assert.equal(entry.size, 6);
      res = await server.api(`${base}/content?path=/workspace/a/b.bin`);
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), data);
      res = await server.api(`${base}/list?path=/workspace/a`);
      assert.deepEqual(
        ((await res.json()) as any).items.map((e: any) => [e.name, e.type]),
        [['b.bin', 'file']],
      );
      res = await server.api(`${base}/mkdir?path=/workspace/d/e`, { method: 'POST' });
      assert.equal(res.status, 201);
      res = await server.api(`${base}/rename`, { method: 'POST', json: { from: '/workspace/a/b.bin', to: '/workspace/d/e/c.bin' } });
      assert.equal(res.status, 200);
      res = await server.api(`${base}/stat?path=/workspace/d/e/c.bin`);
      assert.equal(((await res.json()) as any).size, 6);
      res = await server.api(`${base}?path=/workspace/d`, { method: 'DELETE' });
      assert.equal(res.status, 409, 'a non-empty directory needs recursive=true');
      res = await server.api(`${base}?path=/workspace/d&recursive=true`, { method: 'DELETE' });
      assert.equal(res.status, 204);
      res = await server.api(`${base}/stat?path=/workspace/d`);
      assert.equal(res.status, 404);
      // the sandbox sees what the API wrote (a shell glob, not ls: coreutils' ls needs a statx flag Debian's runsc lacks)
      assert.equal((await sh(server, 'life', 'cd /workspace && echo *')).stdout, 'a\n');
    });

    test('files: a tree goes up and down as tar', async () => {
      await sh(server, 'life', 'mkdir -p /src/sub && echo one > /src/a.txt && echo two > /src/sub/b.txt');
      const res = await server.api(`${NS}/life/files/archive?path=/src`);
      assert.equal(res.status, 200);
      const tarball = Buffer.from(await res.arrayBuffer());
      const up = await server.api(`${NS}/life/files/archive?path=/dst`, { method: 'PUT', body: tarball, headers: { 'content-type': 'application/x-tar' } });
      assert.equal(up.status, 200, await up.clone().text());
      assert.equal(((await up.json()) as any).files, 2);
      assert.equal((await sh(server, 'life', 'cat /dst/a.txt /dst/sub/b.txt')).stdout, 'one\ntwo\n');
    });

    test('/data and /tmp are writable; the image is shared read-only beneath the writable layer', async () => {
      const r = await sh(
        server,
        'life',
        'echo x > /data/f && echo y > /tmp/f && echo z > /usr/local/f && cat /data/f /tmp/f /usr/local/f && df -P /data | tail -1',
      );
      assert.equal(r.exit!.exitCode, 0, r.stderr);
      assert.match(r.stdout, /^x\ny\nz\n/);
    });

    test('the writable layer has a disk limit', async () => {
      // 2Gi default: 3 GiB must fail with ENOSPC inside the sandbox, not fill the host (allocated, not written: a VM's emulated disk is slow).
      const r = await sh(server, 'life', 'fallocate -l 3G /big 2>&1; echo rc=$?; rm -f /big');
      assert.match(r.stdout, /No space left on device/);
    });

    test('logs return the output of the main command', async () => {
      await createReady(server, 'logger', { runtime, command: ['sh', '-c', 'echo main-started; sleep 1000'] });
      let text = '';
      for (let i = 0; i < 50 && !text.includes('main-started'); i++) {
        text = await (await server.api(`${NS}/logger/logs`)).text();
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(text, /main-started/);
    });

    test('pause freezes every process, resume thaws them, and an exec resumes a paused sandbox', async () => {
      const api = (action: string) => server.api(`${NS}/life/${action}`, { method: 'POST' });
      // A counter in its own session, so it outlives the exec that starts it.
      const loop =
        'import time\ni = 0\nwhile True:\n    i += 1\n    open("/tmp/count.new", "w").write(str(i))\n    __import__("os").replace("/tmp/count.new", "/tmp/count")\n    time.sleep(0.01)';
      await sh(server, 'life', `setsid python3 -c '${loop}' </dev/null >/dev/null 2>&1 &`);
      const count = async () => Number((await sh(server, 'life', 'cat /tmp/count')).stdout);
      await new Promise((r) => setTimeout(r, 500));
      const t0 = Date.now();
      const before = await count();

      const paused = await api('pause');
      assert.equal(paused.status, 200, await paused.clone().text());
      assert.equal(((await paused.json()) as any).status.phase, 'Paused');
      assert.equal((await api('pause')).status, 200, 'pausing a paused sandbox is a no-op');
      const got = (await (await server.api(`${NS}/life`)).json()) as any;
      assert.equal(got.status.phase, 'Paused');
      assert.equal(got.status.conditions.find((c: any) => c.type === 'Ready').reason, 'Paused');
      await new Promise((r) => setTimeout(r, 3000));
      const resumed = await api('resume');
      assert.equal(((await resumed.json()) as any).status.phase, 'Running');
      const t1 = Date.now();
      const atResume = await count();
      await new Promise((r) => setTimeout(r, 1000));
      const after = await count();
      const t2 = Date.now();
      // Running, the counter advances at its own rate; frozen for 3 of the t1 - t0 seconds, it must lag well behind it.
      const rate = (after - atResume) / (t2 - t1);
      assert.ok(after > atResume, `the counter goes on after resume (${atResume} → ${after})`);
      assert.ok(
        atResume - before < rate * (t1 - t0 - 3000) * 1.3 + 10,
        `no progress while paused: ${before} → ${atResume} in ${t1 - t0} ms at ${rate.toFixed(3)}/ms`,
      );

      await api('pause');
      const r = await sh(server, 'life', 'echo awake');
      assert.equal(r.stdout, 'awake\n', 'exec on a paused sandbox resumes it first');
      assert.equal(((await (await server.api(`${NS}/life`)).json()) as any).status.phase, 'Running');
      const reasons = ((await (await server.api(`${NS}/life/events`)).json()) as any).items.map((e: any) => e.reason);
      assert.deepEqual(
        reasons.filter((x: string) => x === 'Paused' || x === 'Resumed'),
        ['Paused', 'Resumed', 'Paused', 'Resumed'],
      );
      await sh(server, 'life', 'pkill -f count.new');
    });

    test('delete removes the sandbox and everything it had on the host', async () => {
      const dir = join(server.dataDir, SANDBOX_DIRS[runtime]!, uid);
      await access(dir);
      const res = await server.api(`${NS}/life?wait=true`, { method: 'DELETE' });
      assert.equal(res.status, 200);
      assert.equal((await server.api(`${NS}/life`)).status, 404);
      await assert.rejects(access(dir), 'sandbox directory removed');
      const mounts = await readFile('/proc/self/mountinfo', 'utf8');
      assert.ok(!mounts.includes(uid), 'no mount of the sandbox remains');
      await assert.rejects(access(`/sys/fs/cgroup/memory/moat/${uid}`), 'cgroup removed');
      const r = await execApi(server, 'life', { command: ['true'] });
      assert.equal(r.status, 404, 'exec in a deleted sandbox is 404');
    });
  });
