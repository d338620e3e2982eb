import assert from 'node:assert/strict';
import { readFile, readlink } from 'node:fs/promises';
import { hostname, release } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { TEST_NETWORK, createReady, execApi, sh, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';

/**
 * Each check here fails if the isolation it names is removed. The first ones
 * hold for every runtime; the others check each runtime's own mechanism
 * (gVisor's own are in gvisor.test.ts). What the sandbox's root may not do
 * (capabilities, seccomp, namespaces, devices) is one table for every
 * runtime in confinement.test.ts.
 */
for (const { runtime, skip } of testRuntimes())
  describe(`isolation (${runtime})`, { skip }, () => {
    const only = (...runtimes: string[]) => ({ skip: !runtimes.includes(runtime) && `not a ${runtime} mechanism` });
    let server: TestServer;
    let uid: string;
    before(async () => {
      server = await startTestServer();
      uid = (await createReady(server, 'iso', { runtime, limits: { memory: '128Mi' } })).metadata.uid;
    });
    after(() => server.close());

    test('cannot see host processes (own pid namespace or own kernel)', async () => {
      // Processes with a command line: a VM's kernel threads have none.
      const r = await sh(server, 'iso', 'for p in /proc/[0-9]*; do [ -s $p/cmdline ] && echo; done | wc -l; cat /proc/1/cmdline | tr "\\0" " "');
      const [count, init] = r.stdout.split('\n');
      assert.ok(Number(count) < 10, `only the sandbox's processes are visible, saw ${count}`);
      assert.match(init!, /^\/\.moat\/init/);
      const host = await sh(server, 'iso', `test -e /proc/${process.pid}/cmdline && cat /proc/${process.pid}/cmdline || echo none`);
      assert.doesNotMatch(host.stdout, /node/);
    });

    test("cannot read host files, such as the server's data dir", async () => {
      const db = join(server.dataDir, 'moat.db');
      const r = await sh(server, 'iso', `test -e ${server.dataDir} && echo visible; cat ${db} | head -c 100`);
      assert.match(r.stderr, /moat.db: No such file or directory/);
      assert.equal(r.stdout, '', 'the data dir is not there');
      assert.equal((await sh(server, 'iso', 'cat /etc/hostname')).stdout, 'iso\n', "/etc/hostname is the sandbox's, not the host's");
    });

    test('cannot write outside its root filesystem and volume', async () => {
      const hostPasswd = await readFile('/etc/passwd', 'utf8');
      const r = await sh(server, 'iso', 'echo "evil:x:0:0::/:/bin/sh" >> /etc/passwd; echo pwned > /pwned; echo done');
      assert.equal(r.stdout, 'done\n');
      assert.equal(await readFile('/etc/passwd', 'utf8'), hostPasswd, 'host /etc/passwd unchanged');
      await assert.rejects(readFile('/pwned'));
    });

    test('hostname is the sandbox name and differs from the host', async () => {
      const r = await sh(server, 'iso', 'hostname');
      assert.equal(r.stdout.trim(), 'iso');
      assert.notEqual(hostname(), 'iso');
    });

    test("own network: lo and eth0 only (and a microVM's agent link), and the host API is unreachable", async () => {
      const port = new URL(server.url).port;
      const r = await sh(
        server,
        'iso',
        `ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; python3 -c "
import socket
for host in ('127.0.0.1', '${TEST_NETWORK.serviceAddress}'):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, ${port})); print('reached', host)
    except OSError as e: print('unreachable', host)
"`,
      );
      const links = runtime === 'microvm' ? 'eth0\neth1\nlo\n' : 'eth0\nlo\n';
      assert.equal(r.stdout, `${links}unreachable 127.0.0.1\nunreachable ${TEST_NETWORK.serviceAddress}\n`);
    });

    test("a microVM runs its own kernel; its sandbox sees none of the host's devices nor the guest's", only('microvm'), async () => {
      const r = await sh(
        server,
        'iso',
        'uname -r; ls /sys/block 2>/dev/null | wc -l; ls /dev/kvm /dev/net/tun /dev/sda /dev/vda /dev/vdb /dev/vdc 2>&1 | grep -vc "No such"',
      );
      const [kernel, blocks, devices] = r.stdout.trim().split('\n');
      assert.notEqual(kernel, release(), "the guest kernel is not the host's");
      // Confined as in runc (see confinement.test.ts): no sysfs of its own, and a /dev without the VM's disks.
      assert.equal(blocks, '0', 'no /sys/block');
      assert.equal(devices, '0', `no host device and no guest disk: ${r.stdout}`);
      assert.equal(
        (await sh(server, 'iso', 'mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo denied')).stdout,
        'denied\n',
        "root in the guest's sandbox may not mount",
      );
    });

    test('microVMs resumed from one snapshot each have their own identity: hostname, machine-id, random numbers', only('microvm'), async () => {
      await createReady(server, 'iso-twin', { runtime, limits: { memory: '128Mi' } });
      // Read at once after the resume: the kernel's periodic reseed must not be what tells them apart.
      const probe =
        'hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d " "; python3 -c "import random; print(random.getrandbits(64))"';
      const [a, b] = await Promise.all(['iso', 'iso-twin'].map(async (n) => (await sh(server, n, probe)).stdout.trim().split('\n')));
      assert.deepEqual([a![0], b![0]], ['iso', 'iso-twin']);
      for (let i = 1; i < 4; i++) assert.notEqual(a![i], b![i], `line ${i} of ${JSON.stringify(a)} and ${JSON.stringify(b)} differ`);
      assert.match(a![1]!, /^[0-9a-f]{32}$/);
    });

    test('QEMU itself runs jailed: its own uid, seccomp, namespaces, chroot and the sandbox cgroup', only('microvm'), async () => {
      const pid = (await readFile(join(server.dataDir, 'sandboxes-microvm', uid, 'qemu.pid'), 'utf8')).trim();
      const status = await readFile(`/proc/${pid}/status`, 'utf8');
      const uidOf = Number(/^Uid:\s+(\d+)/m.exec(status)![1]);
      assert.ok(uidOf >= 2 ** 30, `QEMU runs as uid ${uidOf}, not root`);
      assert.match(status, /^Seccomp:\s+2/m, 'QEMU has its seccomp filter');
      for (const ns of ['mnt', 'ipc', 'uts', 'net']) {
        const [ours, its] = await Promise.all([`/proc/self/ns/${ns}`, `/proc/${pid}/ns/${ns}`].map((p) => readlink(p)));
        assert.notEqual(its, ours, `QEMU has its own ${ns} namespace`);
      }
      assert.equal(await readlink(`/proc/${pid}/root`), join(server.dataDir, 'sandboxes-microvm', uid, 'jail'), 'chrooted into an empty directory');
      assert.match(await readFile(`/proc/${pid}/cgroup`, 'utf8'), new RegExp(`/moat/${uid}$`, 'm'), "in the sandbox's cgroup");
    });

    test('a memory hog is OOM-killed at its limit', only('runc', 'microvm'), async () => {
      const r = await execApi(server, 'iso', { command: ['python3', '-c', 'b = bytearray(300 * 1024 * 1024); print(len(b))'] });
      assert.equal(r.exit!.exitCode, 137, `exit ${r.exit!.exitCode}: ${r.stderr}`);
      assert.equal(r.exit!.signal, 'SIGKILL');
      assert.equal((await sh(server, 'iso', 'echo alive')).stdout, 'alive\n', 'the sandbox survives its OOM');
    });

    test('a fork bomb is stopped by the pids limit and the host stays responsive', only('runc', 'microvm'), async () => {
      // Its own sandbox: a bomb leaves the pids cgroup full, so nothing else could fork there afterwards.
      const { metadata } = await createReady(server, 'bomb', { runtime, limits: { 'moat.dev/pids': '64' } });
      const bomb = sh(server, 'bomb', 'bomb() { bomb | bomb & }; bomb; sleep 2', { timeoutSeconds: 5 });
      const t0 = Date.now();
      assert.equal((await fetch(server.url + '/healthz')).status, 200);
      assert.ok(Date.now() - t0 < 2000, 'the API answers during the bomb');
      assert.ok((await bomb).exit, 'the bomb exec finished');
      // The host's view of the sandbox's cgroup (v1 pids controller, or v2 unified); a VM's is in its own kernel.
      const dir = [`/sys/fs/cgroup/pids/moat/${metadata.uid}`, `/sys/fs/cgroup/moat/${metadata.uid}`];
      const read = async (f: string) => (runtime === 'microvm' ? readInGuest(f) : (await Promise.any(dir.map((d) => readFile(join(d, f), 'utf8')))).trim());
      // Inside the guest, reading needs a fork: it succeeds once the bomb has burnt out (each of its shells exits when forks fail).
      const readInGuest = async (f: string) => {
        for (let i = 0; ; i++) {
          const out = (await sh(server, 'bomb', `cat /sys/fs/cgroup/${f}`)).stdout.trim();
          if (out || i >= 40) return out;
          await new Promise((r) => setTimeout(r, 250));
        }
      };
      assert.equal(await read('pids.max'), '64');
      assert.ok(Number(await read('pids.current')) <= 64);
      assert.match(await read('pids.events'), /max [1-9]/, 'forks were refused at the limit');
      const del = await server.api(`/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes/bomb?wait=true`, { method: 'DELETE' });
      assert.equal(del.status, 200);
    });
  });
