// The published `e2b` SDK (pinned in test/e2b/package.json), unchanged, against a Moat server on loopback.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CommandExitError, NotFoundError, Sandbox } from 'e2b';
import { startTestServer, type TestServer } from '../helpers/server.js';

describe('the e2b SDK against Moat', () => {
  let server: TestServer;
  let sbx: Sandbox;
  before(async () => {
    server = await startTestServer();
    // The settings docs/e2b.md gives: one URL for the API and every sandbox, plain HTTP on loopback.
    process.env.E2B_API_KEY = server.adminKey;
    process.env.E2B_API_URL = server.url;
    process.env.E2B_SANDBOX_URL = server.url;
    sbx = await Sandbox.create({ metadata: { suite: 'e2b-sdk' }, envs: { GREETING: 'hi there' } });
  });
  after(async () => {
    await sbx?.kill().catch(() => {});
    await server.close();
  });

  test('create gives a running sandbox with an E2B-style id', async () => {
    assert.match(sbx.sandboxId, /^[a-z0-9]{20}$/);
    assert.equal(await sbx.isRunning(), true);
  });

  test('commands.run: stdout, exit code, environment, user and cwd', async () => {
    const r = await sbx.commands.run('echo hi');
    assert.equal(r.stdout, 'hi\n');
    assert.equal(r.exitCode, 0);
    const env = await sbx.commands.run('echo "$GREETING $FOO"; whoami; pwd', { envs: { FOO: 'bar' } });
    assert.equal(env.stdout, 'hi there bar\nuser\n/home/user\n');
    const root = await sbx.commands.run('whoami', { user: 'root', cwd: '/tmp' });
    assert.equal(root.stdout, 'root\n');
  });

  test('a failing command raises CommandExitError with its exit code and output', async () => {
    await assert.rejects(sbx.commands.run('echo out; echo err >&2; exit 3'), (err: unknown) => {
      assert.ok(err instanceof CommandExitError, String(err));
      assert.equal(err.exitCode, 3);
      assert.equal(err.stdout, 'out\n');
      assert.equal(err.stderr, 'err\n');
      return true;
    });
  });

  test('background commands stream to callbacks, take stdin, are listed and killed', async () => {
    const seen: string[] = [];
    const h = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.2; done', { background: true, onStdout: (d) => void seen.push(d) });
    assert.ok(h.pid > 0);
    const r = await h.wait();
    assert.equal(r.stdout, 'line1\nline2\nline3\n');
    assert.ok(seen.length >= 2, `output came in ${seen.length} callbacks`);

    const cat = await sbx.commands.run('cat', { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, 'fed through stdin');
    await sbx.commands.closeStdin(cat.pid);
    assert.equal((await cat.wait()).stdout, 'fed through stdin');

    const sleeper = await sbx.commands.run('sleep 60', { background: true });
    assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid && p.cmd === '/bin/bash'));
    assert.equal(await sbx.commands.kill(sleeper.pid), true);
    await assert.rejects(sleeper.wait(), (err: unknown) => err instanceof CommandExitError);
    assert.equal(await sbx.commands.kill(sleeper.pid), false);
  });

  test('commands.connect attaches to a running process', async () => {
    const h = await sbx.commands.run('sleep 0.5; echo late', { background: true });
    const again = await sbx.commands.connect(h.pid);
    assert.equal((await again.wait()).stdout, 'late\n');
  });

  test('pty: a terminal of the asked size that takes input', async () => {
    let out = '';
    const term = await sbx.pty.create({ cols: 77, rows: 33, onData: (d) => void (out += Buffer.from(d).toString()) });
    await sbx.pty.resize(term.pid, { cols: 99, rows: 44 });
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size; exit\n'));
    await term.wait();
    assert.match(out, /44 99/);
  });

  test('files: write, read, list, exists, makeDir, rename, remove', async () => {
    const info = await sbx.files.write('notes/a.txt', 'hello moat');
    assert.equal(info.path, '/home/user/notes/a.txt');
    assert.equal(await sbx.files.read('/home/user/notes/a.txt'), 'hello moat');
    assert.deepEqual([...(await sbx.files.read('notes/a.txt', { format: 'bytes' }))], [...Buffer.from('hello moat')]);
    await sbx.files.write([
      { path: 'notes/b.txt', data: 'B' },
      { path: '/home/user/notes/c.bin', data: new Uint8Array([1, 2, 3]).buffer },
    ]);
    const list = await sbx.files.list('notes');
    assert.deepEqual(list.map((e) => e.name).sort(), ['a.txt', 'b.txt', 'c.bin']);
    assert.equal(list.find((e) => e.name === 'c.bin')?.size, 3);
    assert.equal(await sbx.files.exists('notes/b.txt'), true);
    assert.equal(await sbx.files.makeDir('notes/sub/deeper'), true);
    assert.equal(await sbx.files.makeDir('notes/sub/deeper'), false);
    await sbx.files.rename('notes/b.txt', 'notes/sub/b.txt');
    assert.equal(await sbx.files.read('notes/sub/b.txt'), 'B');
    await sbx.files.remove('notes');
    assert.equal(await sbx.files.exists('notes/a.txt'), false);
    await assert.rejects(sbx.files.read('notes/a.txt'), (err: unknown) => err instanceof NotFoundError);
  });

  test('files written by the SDK belong to the sandbox user; paths cannot leave the sandbox', async () => {
    await sbx.files.write('/home/user/mine.txt', 'x');
    assert.equal((await sbx.commands.run('stat -c %U /home/user/mine.txt')).stdout, 'user\n');
    await assert.rejects(sbx.files.write('/etc/moat-denied', 'x'));
    const up = await sbx.files.read('/../../../etc/hostname');
    assert.equal(up.trim(), (await sbx.commands.run('cat /etc/hostname')).stdout.trim());
  });

  test('watchDir reports files created in the directory', async () => {
    await sbx.files.makeDir('watched');
    const events: string[] = [];
    const w = await sbx.files.watchDir('watched', (e) => void events.push(`${e.type}:${e.name}`));
    await sbx.files.write('watched/new.txt', 'n');
    for (let i = 0; i < 50 && !events.some((e) => e.endsWith(':new.txt')); i++) await new Promise((r) => setTimeout(r, 100));
    await w.stop();
    assert.ok(events.includes('create:new.txt'), events.join());
  });

  test('getInfo, setTimeout and list', async () => {
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'e2b-sdk' });
    await sbx.setTimeout(600_000);
    const later = await sbx.getInfo();
    assert.ok(later.endAt.getTime() - Date.now() > 590_000, `ends at ${later.endAt.toISOString()}`);

    const page = await Sandbox.list({ query: { metadata: { suite: 'e2b-sdk' } } }).nextItems();
    assert.deepEqual(
      page.map((s) => s.sandboxId),
      [sbx.sandboxId],
    );
    assert.deepEqual(await Sandbox.list({ query: { metadata: { suite: 'none' } } }).nextItems(), []);
  });

  test('connect gives a working handle to the same sandbox', async () => {
    const again = await Sandbox.connect(sbx.sandboxId);
    assert.equal((await again.commands.run('cat /etc/hostname')).stdout, (await sbx.commands.run('cat /etc/hostname')).stdout);
    await assert.rejects(Sandbox.connect('doesnotexist0000000a'), /not found/i);
  });

  test('a wrong API key is refused', async () => {
    await assert.rejects(Sandbox.create({ apiKey: 'moat_000000000000_nope' }), /401|invalid API key/i);
  });

  test('sandbox traffic needs the key, names a sandbox the key may use, and is validated', async () => {
    const rpc = (id: string, headers: Record<string, string> = {}) =>
      fetch(`${server.url}/process.Process/List`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'connect-protocol-version': '1', 'e2b-sandbox-id': id, 'e2b-sandbox-port': '49983', ...headers },
        body: '{}',
      });
    const noKey = await rpc(sbx.sandboxId);
    assert.equal(noKey.status, 401);
    assert.equal(((await noKey.json()) as { code: string }).code, 'unauthenticated');
    const key = { 'x-access-token': server.adminKey };
    assert.equal((await rpc(sbx.sandboxId, key)).status, 200);
    const missing = await rpc('nosuchsandbox0000000', key);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { code: string }).code, 'not_found');
    assert.equal((await rpc('Not-An-Id', key)).status, 400);
    const extra = await fetch(`${server.url}/process.Process/List`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'e2b-sandbox-id': sbx.sandboxId, ...key },
      body: '{"colour":"red"}',
    });
    assert.equal(extra.status, 400);
  });

  test('the sandbox ends at its timeout', async () => {
    const short = await Sandbox.create({ timeoutMs: 2_000 });
    assert.equal(await short.isRunning(), true);
    for (let i = 0; i < 80 && (await short.isRunning()); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await short.isRunning(), false);
  });

  test("with onTimeout 'pause' the sandbox is paused at its timeout, not killed", async () => {
    const napper = await Sandbox.create({ timeoutMs: 2_000, lifecycle: { onTimeout: 'pause' } });
    try {
      let state = (await napper.getInfo()).state;
      for (let i = 0; i < 80 && state === 'running'; i++) {
        await new Promise((r) => setTimeout(r, 100));
        state = (await napper.getInfo()).state;
      }
      assert.equal(state, 'paused');
    } finally {
      await napper.kill();
    }
  });

  test('pause keeps processes and files; the paused sandbox is out of reach until connect resumes it', async () => {
    await sbx.files.write('kept.txt', 'still here');
    const sleeper = await sbx.commands.run('sleep 600', { background: true });
    assert.equal(await sbx.pause(), true);
    assert.equal(await sbx.pause(), false, 'pausing a paused sandbox answers false');
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.equal(await sbx.isRunning(), false);
    await assert.rejects(sbx.commands.run('true'), /paused/);
    const paused = await Sandbox.list({ query: { state: ['paused'], metadata: { suite: 'e2b-sdk' } } }).nextItems();
    assert.deepEqual(
      paused.map((s) => s.sandboxId),
      [sbx.sandboxId],
    );
    assert.deepEqual(await Sandbox.list({ query: { state: ['running'], metadata: { suite: 'e2b-sdk' } } }).nextItems(), []);

    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 });
    assert.equal((await again.getInfo()).state, 'running');
    assert.equal(await again.isRunning(), true);
    assert.equal(await again.files.read('kept.txt'), 'still here');
    assert.ok(
      (await again.commands.list()).some((p) => p.pid === sleeper.pid),
      'the background process lived through the pause',
    );
    assert.equal(await again.commands.kill(sleeper.pid), true);
  });

  test('a sandbox Moat hibernated (as idle reclaim does) is paused to the SDK; connect wakes it', async () => {
    const res = await server.api(`/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes/${sbx.sandboxId}/hibernate`, { method: 'POST' });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.equal(await sbx.isRunning(), false);
    const again = await Sandbox.connect(sbx.sandboxId);
    assert.equal((await again.commands.run('cat kept.txt')).stdout, 'still here', 'the disk was kept');
    assert.equal((await again.getInfo()).state, 'running');
  });

  test('kill removes the sandbox', async () => {
    const other = await Sandbox.create();
    await other.kill();
    assert.equal(await other.isRunning(), false);
    assert.equal(await Sandbox.kill(other.sandboxId), false);
    await assert.rejects(other.getInfo(), /not found/i);
  });
});
