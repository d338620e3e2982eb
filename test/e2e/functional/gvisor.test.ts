import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GvisorDriver, run } from '@moat/runtime';
import { NS, execApi, sh, sharedImagesDir, startTestServer, type TestServer } from '../../helpers/server.js';

/** A sandbox body with `runtimeClassName: gvisor` (sandboxBody has no runtime option). */
function gvisorBody(name: string, extra: { limits?: Record<string, string>; env?: Record<string, string> } = {}) {
  return {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name },
    spec: {
      podTemplate: {
        spec: {
          runtimeClassName: 'gvisor',
          containers: [
            {
              name: 'sandbox',
              image: 'base',
              ...(extra.env ? { env: Object.entries(extra.env).map(([n, value]) => ({ name: n, value })) } : {}),
              ...(extra.limits ? { resources: { limits: extra.limits } } : {}),
            },
          ],
        },
      },
    },
  };
}

async function createGvisor(server: TestServer, name: string, extra: Parameters<typeof gvisorBody>[1] = {}) {
  const res = await server.api(NS, { method: 'POST', json: gvisorBody(name, extra) });
  if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${await res.text()}`);
  const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=120`);
  if (wait.status !== 200) throw new Error(`wait ${name}: ${wait.status} ${await wait.text()}`);
  return (await wait.json()) as { metadata: { uid: string; name: string }; status: { runtimeClassName?: string } & Record<string, unknown> };
}

const runsc = (server: TestServer, ...args: string[]) =>
  run('runsc', ['--root', join(server.dataDir, 'runtime', 'gvisor'), '--platform=ptrace', ...args], { allowFail: true });

/** gVisor's own mechanisms; exec, files, limits and isolation common to all runtimes are in sandbox-lifecycle and isolation. */
describe('gvisor runtime class', () => {
  let server: TestServer;
  let uid: string;
  before(async () => {
    server = await startTestServer();
    ({
      metadata: { uid },
    } = await createGvisor(server, 'gv', { limits: { memory: '256Mi' }, env: { GREETING: 'hi' } }));
  });
  after(() => server.close());

  test('is available in /info and the sandbox runs under runsc, in its own dirs', async () => {
    const info = (await (await server.api('/apis/moat.dev/v1/info')).json()) as { runtimes: Record<string, { available: boolean }> };
    assert.equal(info.runtimes.gvisor?.available, true, JSON.stringify(info.runtimes));
    const s = (await (await server.api(`${NS}/gv`)).json()) as { status: { runtimeClassName: string } };
    assert.equal(s.status.runtimeClassName, 'gvisor');
    const st = await runsc(server, 'state', uid);
    assert.equal(st.code, 0, st.stderr);
    assert.equal((JSON.parse(st.stdout) as { status: string }).status, 'running');
    assert.ok(existsSync(join(server.dataDir, 'sandboxes-gvisor', uid)));
    assert.ok(!existsSync(join(server.dataDir, 'sandboxes', uid)), "not in runc's sandboxes dir");
  });

  test("the kernel is gVisor's, not the host's", async () => {
    const r = await sh(server, 'gv', 'cat /proc/version; uname -r');
    assert.ok(!r.stdout.includes(release()), `the host kernel release ${release()} is not visible: ${r.stdout}`);
    // gVisor's fixed identity string (runsc 20221219), not a build of Linux.
    assert.match(r.stdout, /^Linux version 4\.4\.0 #1 SMP Sun Jan 10 15:06:54 PST 2016\n4\.4\.0\n$/);
  });

  test('root inside owns files as an unprivileged host uid; no CAP_SYS_ADMIN; mount fails', async () => {
    const r = await sh(
      server,
      'gv',
      [
        'echo x > /data/owned; echo y > /owned-root',
        'mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-denied',
        'grep -E "CapEff" /proc/self/status',
      ].join('; '),
    );
    assert.match(r.stdout, /mount-denied/);
    const capEff = BigInt('0x' + /CapEff:\s+([0-9a-f]+)/.exec(r.stdout)![1]);
    assert.equal(capEff & (1n << 21n), 0n, 'no CAP_SYS_ADMIN');
    const dir = join(server.dataDir, 'sandboxes-gvisor', uid);
    assert.equal((await stat(join(dir, 'data', 'owned'))).uid, 1 << 24);
    assert.equal((await stat(join(dir, 'disk', 'upper', 'owned-root'))).uid, 1 << 24);
    assert.equal((await stat(join(dir, 'sock', 'agent.sock'))).uid, 1 << 24, 'the agent socket was made on the host by the gofer');
  });

  test('the hostname is the sandbox name and can be changed while it runs', async () => {
    assert.equal((await sh(server, 'gv', 'hostname; cat /etc/hostname')).stdout, 'gv\ngv\n');
    const driver = new GvisorDriver({ root: server.dataDir, cacheDir: sharedImagesDir() });
    await driver.setHostname(uid, 'renamed');
    assert.equal((await sh(server, 'gv', 'hostname; cat /etc/hostname; grep renamed /etc/hosts')).stdout, 'renamed\nrenamed\n127.0.1.1\trenamed\n');
    await driver.setHostname(uid, 'gv');
  });

  test('egress goes through the proxy: with no policy, a request gets 403 from it', async () => {
    const r = await sh(server, 'gv', `echo "$HTTP_PROXY"; curl -s --max-time 10 -w '\\n%{http_code}' http://nopolicy.test/`);
    assert.match(r.stdout, /^http:\/\//);
    assert.match(r.stdout, /deny-all/);
    assert.match(r.stdout, /\n403$/);
    const links = await sh(server, 'gv', `ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | sort`);
    assert.equal(links.stdout, 'eth0\nlo\n');
  });

  test('a memory hog is stopped at the memory limit (the host cgroup holds it; the sandbox may not survive)', async (t) => {
    const limit = (await readFile(`/sys/fs/cgroup/memory/moat/${uid}/memory.limit_in_bytes`, 'utf8').catch(() => '')).trim();
    assert.equal(limit, String(256 * 2 ** 20), 'the host cgroup holds the limit');
    const r = await execApi(server, 'gv', { command: ['python3', '-c', 'b = bytearray(600 * 1024 * 1024); print(len(b))'] });
    assert.doesNotMatch(r.stdout, /629145600/, 'the allocation did not succeed');
    const after = await sh(server, 'gv', 'echo alive');
    t.diagnostic(
      `hog: ${JSON.stringify(r.exit)}; afterwards: ${after.stdout ? 'sandbox alive' : `sandbox gone (${JSON.stringify(after.exit ?? after.error)})`}; runsc state: ${(await runsc(server, 'state', uid)).stdout.match(/"status": "(\w+)"/)?.[1] ?? 'missing'}`,
    );
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
  });

  test('a fork bomb is stopped by the pids limit and the host stays responsive', async (t) => {
    const { metadata } = await createGvisor(server, 'gvbomb', { limits: { 'moat.dev/pids': '64' } });
    assert.equal((await readFile(`/sys/fs/cgroup/pids/moat/${metadata.uid}/pids.max`, 'utf8')).trim(), '64');
    const bomb = sh(server, 'gvbomb', 'bomb() { bomb | bomb & }; bomb; sleep 2', { timeoutSeconds: 5 });
    const t0 = Date.now();
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
    assert.ok(Date.now() - t0 < 2000, 'the API answers during the bomb');
    await bomb;
    const after = await sh(server, 'gvbomb', 'echo alive');
    const events = await readFile(`/sys/fs/cgroup/pids/moat/${metadata.uid}/pids.events`, 'utf8').catch(() => 'gone');
    t.diagnostic(`afterwards: ${after.stdout ? 'sandbox alive' : 'sandbox gone'}; host pids.events: ${events.trim()}`);
    const del = await server.api(`${NS}/gvbomb?wait=true`, { method: 'DELETE' });
    assert.equal(del.status, 200);
  });

  test('delete removes the runsc container, the mounts, the cgroup and the dirs', async () => {
    const { metadata } = await createGvisor(server, 'gvdel');
    const dir = join(server.dataDir, 'sandboxes-gvisor', metadata.uid);
    assert.ok(existsSync(dir));
    const del = await server.api(`${NS}/gvdel?wait=true`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    assert.ok(!existsSync(dir), 'sandbox dir removed');
    assert.equal((await runsc(server, 'state', metadata.uid)).code !== 0, true, 'runsc no longer knows it');
    assert.ok(!(await readdir(join(server.dataDir, 'runtime', 'gvisor'))).some((f) => f.includes(metadata.uid)), 'no runsc state left');
    assert.doesNotMatch(await readFile('/proc/self/mountinfo', 'utf8'), new RegExp(metadata.uid), 'no mounts left');
    assert.ok(!existsSync(`/sys/fs/cgroup/memory/moat/${metadata.uid}`), 'no cgroup left');
    const ps = await run('ps', ['-eo', 'args'], { allowFail: true });
    assert.doesNotMatch(ps.stdout, new RegExp(`runsc.*${metadata.uid}`), 'no runsc process left');
  });
});

describe('gvisor: missing runsc and unknown runtimes', () => {
  test('check() names the package to install when runsc is missing', async () => {
    const driver = new GvisorDriver({ root: '/nonexistent', cacheDir: '/nonexistent', binary: 'runsc-not-installed' });
    await assert.rejects(driver.check(), /runsc-not-installed is not installed: apt-get install runsc/);
  });

  test('an unknown runtime class is a 422 that lists gvisor', async () => {
    const server = await startTestServer();
    try {
      const body = gvisorBody('x');
      body.spec.podTemplate.spec.runtimeClassName = 'kata';
      const res = await server.api(NS, { method: 'POST', json: body });
      assert.equal(res.status, 422);
      assert.match(await res.text(), /unknown runtime \\"kata\\".*gvisor/);
    } finally {
      await server.close();
    }
  });
});
