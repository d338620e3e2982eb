import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SETUP_CRIU, findCriu } from '@moat/runtime';
import { NS, createReady, sh, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';
import { kill, spawnServer } from '../../helpers/spawn-server.js';

/** Where each runtime keeps its sandboxes' host state. */
const SANDBOX_DIRS: Record<string, string> = { runc: 'sandboxes', gvisor: 'sandboxes-gvisor', microvm: 'sandboxes-microvm' };

/**
 * A Python process whose state exists only in its memory: a random token,
 * a hit counter and some ballast, served over HTTP on port 9000.
 */
const STATEFUL = `import http.server, json, os, secrets
state = {"token": secrets.token_hex(16), "hits": 0, "ballast": bytearray(os.urandom(1 << 20)) * 24}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state["hits"] += 1
        body = json.dumps({"pid": os.getpid(), "token": state["token"], "hits": state["hits"], "ballast": len(state["ballast"])}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 9000), H).serve_forever()
`;

/** Asks the stateful process from inside the sandbox (raw HTTP: no proxy variables involved). */
const ASK = `python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 9000)); s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); print(b"".join(iter(lambda: s.recv(65536), b"")).split(b"\\r\\n\\r\\n", 1)[1].decode())'`;

/**
 * A TCP connection on loopback between two sockets of one Python process, which answers, on a unix socket,
 * its pid, how often it was asked (in memory) and what a ping through the connection gave.
 */
const LOOPBACK_PAIR = `import os, socket
srv = socket.create_server(("127.0.0.1", 9100))
cli = socket.create_connection(("127.0.0.1", 9100))
peer, _ = srv.accept()
asked = 0
u = socket.socket(socket.AF_UNIX)
u.bind("/tmp/pair.sock")
u.listen(4)
while True:
    c, _ = u.accept()
    asked += 1
    try:
        cli.sendall(b"ping")
        got = peer.recv(4).decode() or "eof"
    except OSError as e:
        got = type(e).__name__
    c.sendall(f"{os.getpid()} {asked} {got}".encode())
    c.close()
`;

async function waitPair(server: TestServer, name: string): Promise<{ pid: number; asked: number; peer: string }> {
  const ask = 'python3 -c \'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/tmp/pair.sock"); print(s.recv(200).decode())\'';
  for (let i = 0; ; i++) {
    const r = await sh(server, name, ask);
    if (r.exit?.exitCode === 0 && r.stdout.trim()) {
      const [pid, asked, peer] = r.stdout.trim().split(' ');
      return { pid: Number(pid), asked: Number(asked), peer: peer! };
    }
    if (i > 100) throw new Error(`the connection pair does not answer: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

interface Held {
  pid: number;
  token: string;
  hits: number;
  ballast: number;
}

/** Waits until the stateful process (the sandbox's main command) answers, and returns what it holds. */
async function waitStateful(server: TestServer, name: string): Promise<Held> {
  for (let i = 0; ; i++) {
    const r = await sh(server, name, ASK);
    if (r.exit?.exitCode === 0 && r.stdout.trim()) return JSON.parse(r.stdout) as Held;
    if (i > 300) throw new Error(`the stateful process does not answer: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** The CRIU the runc driver checkpoints with: setup's build, else the distribution's. */
const criu = await findCriu();

/**
 * Whether the runtime can save this workload's processes on this host; when not, the
 * reason hibernate must give. runc falls back with any CRIU but setup's build (see docs/lifecycle.md).
 */
function expectation(runtime: string): { kept: true } | { kept: false; reason: RegExp } {
  if (runtime === 'runc') {
    if (!criu) return { kept: false, reason: /runc checkpoint needs CRIU, which is not installed/ };
    return criu.path === SETUP_CRIU && spawnSync(criu.path, ['check'], { stdio: 'ignore' }).status === 0
      ? { kept: true }
      : { kept: false, reason: /runc checkpoint \(CRIU [\d.]+\) failed/ };
  }
  // microVMs, and gVisor: the driver refuses runsc releases before MIN_RUNSC_RELEASE, and every later one must save it.
  return { kept: true };
}

async function ask(server: TestServer, name: string): Promise<Held> {
  const r = await sh(server, name, ASK);
  assert.equal(r.exit?.exitCode, 0, `asking the stateful process failed: ${r.stderr} ${JSON.stringify(r.error ?? r.exit)}`);
  return JSON.parse(r.stdout) as Held;
}

/** Memory the host charges to the sandbox's cgroup (0 once nothing of it is left). */
async function hostMemory(uid: string): Promise<number> {
  for (const f of [`/sys/fs/cgroup/moat/${uid}/memory.current`, `/sys/fs/cgroup/memory/moat/${uid}/memory.usage_in_bytes`]) {
    const text = await readFile(f, 'utf8').catch(() => undefined);
    if (text !== undefined) return Number(text.trim());
  }
  return 0;
}

const api = (server: TestServer, name: string, action: string) => server.api(`${NS}/${name}/${action}`, { method: 'POST' });
const get = async (server: TestServer, name: string) => (await (await server.api(`${NS}/${name}`)).json()) as any;
const condition = (s: any, type: string) => s.status.conditions.find((c: any) => c.type === type);
const reasons = async (server: TestServer, name: string) =>
  ((await (await server.api(`${NS}/${name}/events`)).json()) as any).items.map((e: any) => e.reason) as string[];
const MiB = 2 ** 20;

for (const { runtime, skip } of testRuntimes())
  describe(`hibernate and wake (${runtime})`, { skip }, () => {
    let server: TestServer;
    let uid: string;
    const expect = expectation(runtime);
    /** Asserts the condition hibernate set: Checkpointed where the runtime can save the workload, otherwise StoppedWithDisks and why. */
    const checkHibernated = async (s: any) => {
      assert.equal(s.status.phase, 'Hibernated');
      assert.equal(condition(s, 'Ready').status, 'False');
      const c = condition(s, 'Hibernated');
      assert.equal(c.status, 'True');
      if (expect.kept) assert.equal(c.reason, 'Checkpointed', c.message);
      else {
        assert.equal(c.reason, 'StoppedWithDisks', c.message);
        assert.match(c.message, /memory was not saved/);
        assert.match(c.message, expect.reason);
      }
      return c;
    };
    /** After a wake: the same process with the same memory, or (fallback) the main command started afresh on the kept disks. */
    const checkWoken = (before: Held, now: Held) => {
      if (expect.kept) {
        assert.deepEqual({ ...now, hits: 0 }, { ...before, hits: 0 }, 'the same process, with the same memory');
        assert.equal(now.hits, before.hits + 1, 'the counter goes on from where it was');
      } else {
        assert.notEqual(now.token, before.token, 'memory was not kept: the process started afresh');
        assert.equal(now.hits, 1);
      }
    };
    before(async () => {
      server = await startTestServer();
      uid = (await createReady(server, 'hib', { runtime, command: ['python3', '-c', STATEFUL] })).metadata.uid;
    });
    after(() => server.close());

    test('hibernate saves a Python process with its memory, frees it, and an exec wakes it with its state', async () => {
      await sh(server, 'hib', 'echo kept > /root/on-disk; echo kept > /data/on-disk');
      const held = await waitStateful(server, 'hib');
      assert.equal(held.ballast, 24 * MiB);
      const used = await hostMemory(uid);
      assert.ok(used > 24 * MiB, `the sandbox uses its memory on the host (${used})`);

      const res = await api(server, 'hib', 'hibernate');
      assert.equal(res.status, 200, await res.clone().text());
      const c = await checkHibernated(await res.json());
      assert.equal((await api(server, 'hib', 'hibernate')).status, 200, 'hibernating a hibernated sandbox is a no-op');
      const dir = join(server.dataDir, SANDBOX_DIRS[runtime]!, uid);
      if (expect.kept) await access(join(dir, 'checkpoint', 'complete.json'));
      else await assert.rejects(access(join(dir, 'checkpoint')), 'no half-made checkpoint is left');
      const freed = await hostMemory(uid);
      assert.ok(freed < 8 * MiB, `the memory is freed on the host (${used} → ${freed} bytes)`);

      const t0 = Date.now();
      const now = await (expect.kept ? ask(server, 'hib') : waitStateful(server, 'hib'));
      const wakeMs = Date.now() - t0;
      checkWoken(held, now);
      assert.equal((await sh(server, 'hib', 'cat /root/on-disk /data/on-disk')).stdout, 'kept\nkept\n', 'the disks are kept either way');
      if (runtime === 'runc') {
        // The user namespace's own limits (set by the createRuntime hook, docs/density.md) hold in the restored one too.
        const limits = await sh(server, 'hib', 'cat /proc/sys/user/max_inotify_instances /proc/sys/user/max_inotify_watches');
        assert.equal(limits.stdout, '128\n65536\n');
      }
      const woken = await get(server, 'hib');
      assert.equal(woken.status.phase, 'Running');
      assert.equal(condition(woken, 'Ready').status, 'True');
      assert.equal(condition(woken, 'Hibernated').status, 'False');
      assert.equal(condition(woken, 'Hibernated').reason, expect.kept ? 'Restored' : 'Restarted', condition(woken, 'Hibernated').message);
      const r = await reasons(server, 'hib');
      assert.deepEqual(
        r.filter((x) => ['Hibernated', 'HibernatedWithoutMemory', 'Woken'].includes(x)),
        [expect.kept ? 'Hibernated' : 'HibernatedWithoutMemory', 'Woken'],
      );
      process.stderr.write(`# ${runtime}: ${c.reason}; woken by an exec in ${wakeMs} ms; ${c.message}\n`);

      // Wake through the API as well.
      const again = await ask(server, 'hib');
      await api(server, 'hib', 'hibernate');
      const w = await api(server, 'hib', 'wake');
      assert.equal(w.status, 200, await w.clone().text());
      assert.equal(((await w.json()) as any).status.phase, 'Running');
      checkWoken(again, await waitStateful(server, 'hib'));
      assert.equal((await api(server, 'hib', 'wake')).status, 200, 'waking a running sandbox is a no-op');
    });

    test('a connection through port exposure wakes a hibernated sandbox', async () => {
      const before = await ask(server, 'hib');
      await checkHibernated(await (await api(server, 'hib', 'hibernate')).json());
      assert.equal((await get(server, 'hib')).status.phase, 'Hibernated');
      let res = await server.api(`${NS}/hib/ports/9000/`);
      assert.equal((await get(server, 'hib')).status.phase, 'Running', 'the connection woke it');
      // After a fresh start the main command needs a moment before it listens.
      for (let i = 0; res.status !== 200 && !expect.kept && i < 100; i++) {
        await new Promise((r) => setTimeout(r, 100));
        res = await server.api(`${NS}/hib/ports/9000/`);
      }
      assert.equal(res.status, 200, await res.clone().text());
      checkWoken(before, (await res.json()) as Held);
    });

    test('a paused sandbox can be hibernated', async () => {
      const before = await ask(server, 'hib');
      assert.equal((await api(server, 'hib', 'pause')).status, 200);
      const res = await api(server, 'hib', 'hibernate');
      assert.equal(res.status, 200, await res.clone().text());
      await checkHibernated(await res.json());
      checkWoken(before, await waitStateful(server, 'hib'));
    });

    test(
      'a workload the runtime cannot save: stopped with its disks, and status says so',
      {
        skip:
          runtime !== 'runc'
            ? 'only runc (CRIU) has a workload it refuses here'
            : !expect.kept
              ? 'CRIU cannot run on this host: every hibernate falls back (tested above)'
              : false,
      },
      async () => {
        await createReady(server, 'nockpt', { runtime });
        await sh(server, 'nockpt', 'echo kept > /data/f; echo kept > /root/f');
        // A socket of a family CRIU has no support for: AF_ALG (kernel crypto), or AF_VSOCK where the kernel lacks that.
        const alg = `import socket, time\\ntry:\\n    s = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET)\\nexcept OSError:\\n    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\\nopen("/tmp/alg.ready", "w").close()\\ntime.sleep(3600)`;
        await sh(server, 'nockpt', `printf '${alg}' > /tmp/alg.py; setsid python3 /tmp/alg.py </dev/null >/tmp/alg.log 2>&1 &`);
        for (let i = 0; (await sh(server, 'nockpt', 'test -e /tmp/alg.ready')).exit?.exitCode !== 0; i++) {
          if (i > 100) throw new Error(`the unsaveable process did not start: ${(await sh(server, 'nockpt', 'cat /tmp/alg.log')).stdout}`);
          await new Promise((res) => setTimeout(res, 100));
        }
        const res = await api(server, 'nockpt', 'hibernate');
        assert.equal(res.status, 200, await res.clone().text());
        const s = (await res.json()) as any;
        assert.equal(s.status.phase, 'Hibernated');
        const c = condition(s, 'Hibernated');
        assert.equal(c.reason, 'StoppedWithDisks');
        assert.match(c.message, /memory was not saved/);
        assert.ok((await reasons(server, 'nockpt')).includes('HibernatedWithoutMemory'));
        const r = await sh(server, 'nockpt', 'cat /data/f /root/f; test -e /tmp/alg.ready && echo same-process || echo fresh-start');
        assert.equal(r.stdout, 'kept\nkept\nfresh-start\n', 'disks kept, processes started afresh');
        const woken = await get(server, 'nockpt');
        assert.equal(woken.status.phase, 'Running');
        assert.equal(condition(woken, 'Hibernated').reason, 'Restarted');
      },
    );

    test(
      'a TCP connection open inside the sandbox comes back closed, the processes with their memory',
      { skip: runtime !== 'runc' ? 'runc (CRIU) only' : !expect.kept ? 'CRIU cannot run on this host (tested above)' : false },
      async () => {
        await createReady(server, 'tcp', { runtime, command: ['python3', '-c', LOOPBACK_PAIR] });
        const before = await waitPair(server, 'tcp');
        assert.equal(before.peer, 'ping', 'the connection works before');
        const res = await api(server, 'tcp', 'hibernate');
        assert.equal(res.status, 200, await res.clone().text());
        const c = condition((await res.json()) as any, 'Hibernated');
        assert.equal(c.reason, 'Checkpointed', c.message);
        const now = await waitPair(server, 'tcp');
        assert.equal(condition(await get(server, 'tcp'), 'Hibernated').reason, 'Restored');
        assert.deepEqual([now.pid, now.asked], [before.pid, before.asked + 1], 'the same process, with its memory');
        assert.match(now.peer, /^(BrokenPipeError|ConnectionResetError|eof)$/, 'the connection is closed');
      },
    );
  });

for (const { runtime, skip } of testRuntimes())
  describe(`hibernate across a control-plane restart (${runtime})`, { skip }, () => {
    let dataDir: string;
    let live: { child: ChildProcess; server: TestServer } | undefined;
    const expect = expectation(runtime);
    before(async () => {
      dataDir = await mkdtemp(join(tmpdir(), 'moat-hibernate-'));
    });
    after(async () => {
      if (live) {
        await live.server.api(`${NS}/rest?wait=true`, { method: 'DELETE' });
        await kill(live.child);
      }
      await rm(dataDir, { recursive: true, force: true });
    });

    test('a sandbox hibernated before the server stops stays hibernated after it starts, and wakes with its state', async () => {
      live = await spawnServer(dataDir);
      await createReady(live.server, 'rest', { runtime, command: ['python3', '-c', STATEFUL] });
      const held = await waitStateful(live.server, 'rest');
      const res = await api(live.server, 'rest', 'hibernate');
      assert.equal(res.status, 200, await res.clone().text());
      const reason = condition((await res.json()) as any, 'Hibernated').reason;
      assert.equal(reason, expect.kept ? 'Checkpointed' : 'StoppedWithDisks');

      await kill(live.child);
      live = await spawnServer(dataDir);
      const s = await get(live.server, 'rest');
      assert.equal(s.status.phase, 'Hibernated', 'not restarted, not removed as an orphan');
      assert.equal(condition(s, 'Hibernated').reason, reason);
      assert.ok(!(await reasons(live.server, 'rest')).includes('Restarting'));

      const now = await (expect.kept ? ask(live.server, 'rest') : waitStateful(live.server, 'rest'));
      if (expect.kept) {
        assert.equal(now.token, held.token);
        assert.equal(now.pid, held.pid);
        assert.equal(now.hits, held.hits + 1);
      } else assert.notEqual(now.token, held.token);
      assert.equal((await get(live.server, 'rest')).status.phase, 'Running');
    });
  });
