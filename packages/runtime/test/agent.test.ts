import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { AgentClient, AgentError, type ExecRequest } from '../src/agent/index.js';
import { FrameDecoder, FrameType, decodeRecord, encodeFrame, encodeRecord } from '../src/agent/protocol.js';

/** The built agent; MOAT_INIT_BINARY runs the suite against another build (e.g. with sanitizers). */
const BIN = process.env.MOAT_INIT_BINARY ?? fileURLToPath(new URL('../../agent/build/moat-init', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let sock: string;
let agentProc: ChildProcess;
let agent: AgentClient;

async function run(req: ExecRequest, stdin?: Buffer | string) {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const h = agent.exec(req, { onStdout: (b) => out.push(b), onStderr: (b) => err.push(b) });
  if (stdin !== undefined) h.writeStdin(stdin);
  if (stdin !== undefined) h.closeStdin();
  const r = await h.done;
  return { ...r, pid: await h.pid, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts);
}

/** True once no process is left in the group (the agent reaps the orphans it inherits as subreaper). */
async function groupGone(pgid: number, timeoutMs = 3000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(-pgid, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return true;
      throw e;
    }
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

async function rejectsWith(p: Promise<unknown>, code: string) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof AgentError, `expected AgentError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

/** Sends raw bytes on a fresh connection and returns every frame the agent answers before closing. */
function raw(bytes: Buffer, { end = true } = {}): Promise<{ type: number; payload: Buffer }[]> {
  return new Promise((resolve, reject) => {
    const s = connect({ path: sock });
    const dec = new FrameDecoder();
    const frames: { type: number; payload: Buffer }[] = [];
    s.on('data', (c: Buffer) => frames.push(...dec.push(c)));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' || e.code === 'EPIPE' ? undefined : reject(e)));
    s.on('close', () => resolve(frames));
    s.write(bytes);
    if (end) s.end();
  });
}

/** Everything a stream yields until its end. */
function readAll(s: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (b: Buffer) => parts.push(b));
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

async function listenLocal(server: Server): Promise<number> {
  // 127.0.0.1 only: these tests never listen on any other address.
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** A TCP server on 127.0.0.1 whose connections can be awaited one by one. */
async function tcpServer(onConn: (s: Socket) => void = () => {}, allowHalfOpen = false) {
  const sockets = new Set<Socket>();
  const waiting: ((s: Socket) => void)[] = [];
  const pending: Socket[] = [];
  const server = createServer({ allowHalfOpen }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConn(s);
    const w = waiting.shift();
    if (w) w(s);
    else pending.push(s);
  });
  const port = await listenLocal(server);
  return {
    port,
    sockets,
    next: () => (pending.length ? Promise.resolve(pending.shift()!) : new Promise<Socket>((r) => waiting.push(r))),
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

const agentFds = async () => (await readdir(`/proc/${agentProc.pid}/fd`)).length;
const agentChildren = async () => (await readFile(`/proc/${agentProc.pid}/task/${agentProc.pid}/children`, 'utf8')).split(' ').filter(Boolean).length;

/** Until the agent answers on its socket (after a start, or after it listens again). */
async function listening() {
  for (let i = 0; ; i++) {
    try {
      return await agent.ping(500);
    } catch (e) {
      if (i > 200) throw e;
      await sleep(10);
    }
  }
}

before(async () => {
  assert.ok(existsSync(BIN), `${BIN} is missing: run make -C packages/agent`);
  dir = await mkdtemp(join(tmpdir(), 'moat-agent-test-'));
  sock = join(dir, 'agent.sock');
  agentProc = spawn(BIN, ['--socket', sock], { stdio: ['ignore', 'inherit', 'inherit'] });
  agent = new AgentClient(sock);
  await listening();
});

after(async () => {
  if (agentProc.exitCode === null && agentProc.signalCode === null) {
    const exited = new Promise((r) => agentProc.once('exit', r));
    agentProc.kill('SIGTERM');
    const t = setTimeout(() => agentProc.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  }
  await rm(dir, { recursive: true, force: true });
});

describe('exec', () => {
  test('stdout, stderr and the exit code', async () => {
    const r = await run({ command: ['sh', '-c', 'echo a; echo b >&2; exit 3'] });
    assert.equal(r.stdout.toString(), 'a\n');
    assert.equal(r.stderr.toString(), 'b\n');
    assert.equal(r.exitCode, 3);
    assert.equal(r.signal, null);
    assert.ok(r.pid > 1);
  });

  test('env, cwd and the default environment', async () => {
    const r = await run({ command: ['sh', '-c', 'echo "$FOO|$HOME|$USER|$PATH"; pwd'], env: { FOO: 'bar baz' }, cwd: dir });
    const [vars, cwd] = r.stdout.toString().trim().split('\n');
    const [foo, home, user, path] = vars!.split('|');
    assert.equal(foo, 'bar baz');
    assert.equal(home, '/root');
    assert.equal(user, 'root');
    assert.match(path!, /\/usr\/bin/);
    assert.equal(cwd, dir);
  });

  test('stdin round trip through cat', async () => {
    const r = await run({ command: ['cat'] }, 'hello\nworld\n');
    assert.equal(r.stdout.toString(), 'hello\nworld\n');
    assert.equal(r.exitCode, 0);
  });

  test('4 MB of stdin with backpressure', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const out: Buffer[] = [];
    const h = agent.exec({ command: ['sh', '-c', 'sha256sum | cut -d" " -f1'] }, { onStdout: (b) => out.push(b) });
    for (let i = 0; i < data.length; i += 100_000) {
      if (!h.writeStdin(data.subarray(i, i + 100_000))) await h.drain();
    }
    h.closeStdin();
    assert.equal((await h.done).exitCode, 0);
    assert.equal(Buffer.concat(out).toString().trim(), sha(data));
  });

  test('a program that exits without reading its stdin still reports EXIT', async () => {
    for (let i = 0; i < 10; i++) {
      const r = await run({ command: ['head', '-c', '10'] }, randomBytes(8 * 1024 * 1024));
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout.length, 10);
    }
  });

  test('5 MB of output arrives intact', async () => {
    const data = randomBytes(5 * 1024 * 1024);
    const f = join(dir, 'big.bin');
    await writeFile(f, data);
    const r = await run({ command: ['cat', f] });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.length, data.length);
    assert.equal(sha(r.stdout), sha(data));
  });

  test('output written just before exit is not lost', async () => {
    for (let i = 0; i < 20; i++) {
      const r = await run({ command: ['sh', '-c', 'head -c 100000 /dev/zero; echo end >&2'] });
      assert.equal(r.stdout.length, 100000);
      assert.equal(r.stderr.toString(), 'end\n');
    }
  });

  test('SIGNAL reaches the whole process group', async () => {
    const h = agent.exec({ command: ['sh', '-c', 'sleep 100 & sleep 100 & wait'] });
    const pid = await h.pid;
    await sleep(100);
    h.signal(15);
    const r = await h.done;
    assert.equal(r.signal, 15);
    assert.equal(r.exitCode, 143);
    assert.ok(await groupGone(pid), 'the sleeps survived SIGTERM');
  });

  test('kill() drops the connection and the agent kills the group', async () => {
    const h = agent.exec({ command: ['sh', '-c', 'trap "" TERM; sleep 100 & sleep 100 & wait'] });
    const pid = await h.pid;
    await sleep(100);
    h.kill();
    await rejectsWith(h.done, 'EKILLED');
    assert.ok(await groupGone(pid), 'processes survived kill()');
  });

  test('tty: a /dev/pts device, and resize reaches stty', async () => {
    const r = await run({ command: ['tty'], tty: true });
    assert.match(r.stdout.toString(), /^\/dev\/pts\/\d+\r?\n$/);
    assert.equal(r.exitCode, 0);

    let out = '';
    const h = agent.exec({ command: ['sh', '-c', 'stty size; read x; stty size'], tty: true, rows: 30, cols: 100 }, { onStdout: (b) => (out += b.toString()) });
    for (let i = 0; !out.includes('30 100'); i++) {
      assert.ok(i < 300, `no initial size in ${JSON.stringify(out)}`);
      await sleep(10);
    }
    h.resize(40, 120);
    h.writeStdin('\n');
    const res = await h.done;
    assert.equal(res.exitCode, 0);
    assert.match(out, /40 120/);
  });

  test('tty: TERM is set and stdin EOF is ^D', async () => {
    const r = await run({ command: ['sh', '-c', 'echo $TERM; cat >/dev/null; echo done'], tty: true }, 'x\n');
    assert.match(r.stdout.toString(), /xterm-256color/);
    assert.match(r.stdout.toString(), /done/);
  });

  test('a missing program is ENOENT and never starts', async () => {
    const h = agent.exec({ command: ['definitely-not-a-program-xyz'] });
    await rejectsWith(h.pid, 'ENOENT');
    await rejectsWith(h.done, 'ENOENT');
    await rejectsWith(agent.exec({ command: [join(dir, 'nope')] }).done, 'ENOENT');
    // also when stdin is already streaming in
    const s = agent.exec({ command: ['definitely-not-a-program-xyz'] });
    s.writeStdin(randomBytes(4 * 1024 * 1024));
    s.closeStdin();
    await rejectsWith(s.done, 'ENOENT');
  });

  test('a non-executable file is EACCES; a missing cwd is ENOENT', async () => {
    const f = join(dir, 'noexec.sh');
    await writeFile(f, '#!/bin/sh\necho hi\n');
    await chmod(f, 0o644);
    await rejectsWith(agent.exec({ command: [f] }).done, 'EACCES');
    await rejectsWith(agent.exec({ command: ['true'], cwd: join(dir, 'missing') }).done, 'ENOENT');
  });

  test('user switching', async () => {
    const r = await run({ command: ['sh', '-c', 'id -u; id -g; pwd; echo $HOME'], user: 'nobody' });
    assert.equal(r.stdout.toString(), '65534\n65534\n/\n/nonexistent\n');
    const n = await run({ command: ['id', '-u'], user: '12345' });
    assert.equal(n.stdout.toString(), '12345\n');
    await rejectsWith(agent.exec({ command: ['true'], user: 'no-such-user-xyz' }).done, 'EINVAL');
  });

  test('50 concurrent execs all succeed', async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => run({ command: ['sh', '-c', 'sleep 0.05; echo $0', String(i)] })));
    results.forEach((r, i) => {
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout.toString(), `${i}\n`);
    });
  });

  test('latency of sequential `true` execs', async () => {
    const times: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t = performance.now();
      const r = await agent.exec({ command: ['true'] }).done;
      times.push(performance.now() - t);
      assert.equal(r.exitCode, 0);
    }
    times.sort((a, b) => a - b);
    console.log(
      `exec latency over 200 sequential \`true\`: median ${times[100]!.toFixed(2)} ms, p90 ${times[180]!.toFixed(2)} ms, min ${times[0]!.toFixed(2)} ms`,
    );
  });
});

describe('files', () => {
  test('write/read round trip of binary data, 3 MB, from a Buffer and a stream', async () => {
    const small = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const e = await agent.writeFile(join(dir, 'bytes.bin'), small);
    assert.equal(e.type, 'file');
    assert.equal(e.size, 256);
    assert.equal(e.mode, 0o644);
    assert.equal(e.path, join(dir, 'bytes.bin'));
    assert.deepEqual(await collect(agent.readFile(join(dir, 'bytes.bin'))), small);

    const big = randomBytes(3 * 1024 * 1024 + 7);
    const src = Readable.from(
      (function* () {
        for (let i = 0; i < big.length; i += 100_003) yield big.subarray(i, i + 100_003);
      })(),
    );
    const e2 = await agent.writeFile(join(dir, 'a/b/c/big.bin'), src, { mode: 0o600 });
    assert.equal(e2.size, big.length);
    assert.equal(e2.mode, 0o600);
    assert.equal(sha(await readFile(join(dir, 'a/b/c/big.bin'))), sha(big));
    assert.equal((await stat(join(dir, 'a/b'))).mode & 0o777, 0o755);
    const chunks: Buffer[] = [];
    for await (const c of agent.readFile(join(dir, 'a/b/c/big.bin'))) {
      assert.ok(c.length <= 64 * 1024);
      chunks.push(c);
    }
    assert.equal(sha(Buffer.concat(chunks)), sha(big));
  });

  test('append and truncate', async () => {
    const f = join(dir, 'log.txt');
    await agent.writeFile(f, 'one\n');
    await agent.writeFile(f, 'two\n', { append: true });
    assert.equal(await readFile(f, 'utf8'), 'one\ntwo\n');
    await agent.writeFile(f, 'x');
    assert.equal(await readFile(f, 'utf8'), 'x');
  });

  test('an abandoned read does not hang', async () => {
    const it = agent.readFile(join(dir, 'big.bin'))[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    await it.return?.();
  });

  test('list, stat, mkdir, remove, rename', async () => {
    const base = join(dir, 'tree');
    const m = await agent.mkdir(base);
    assert.equal(m.type, 'dir');
    assert.equal(m.name, 'tree');
    await rejectsWith(agent.mkdir(base), 'EEXIST');
    await agent.mkdir(base, { parents: true });
    const deep = await agent.mkdir(join(base, 'x/y/z'), { parents: true, mode: 0o700 });
    assert.equal(deep.mode, 0o700);
    await rejectsWith(agent.mkdir(join(base, 'p/q')), 'ENOENT');
    await agent.writeFile(join(base, 'f.txt'), 'hello');
    await symlink('f.txt', join(base, 'link'));

    const items = (await agent.list(base)).sort((a, b) => a.name.localeCompare(b.name));
    assert.deepEqual(
      items.map((i) => [i.name, i.type]),
      [
        ['f.txt', 'file'],
        ['link', 'symlink'],
        ['x', 'dir'],
      ],
    );
    const f = items[0]!;
    assert.equal(f.path, join(base, 'f.txt'));
    assert.equal(f.size, 5);
    assert.equal(f.uid, 0);
    assert.ok(Math.abs(f.mtime.getTime() - Date.now()) < 60_000);
    assert.equal(items[1]!.target, 'f.txt');

    const s = await agent.stat(join(base, 'link'));
    assert.equal(s.type, 'symlink');
    assert.equal(s.target, 'f.txt');
    assert.equal(s.path, join(base, 'link'));
    await rejectsWith(agent.stat(join(base, 'missing')), 'ENOENT');
    await rejectsWith(agent.list(join(base, 'missing')), 'ENOENT');
    await rejectsWith(agent.list(join(base, 'f.txt')), 'ENOTDIR');
    await rejectsWith(collect(agent.readFile(join(base, 'missing'))), 'ENOENT');
    await rejectsWith(collect(agent.readFile(base)), 'EISDIR');
    await rejectsWith(agent.writeFile(base, 'x'), 'EISDIR');
    // an early refusal stops a large upload instead of hanging on backpressure
    await rejectsWith(agent.writeFile(base, randomBytes(8 * 1024 * 1024)), 'EISDIR');

    const r = await agent.rename(join(base, 'f.txt'), join(base, 'g.txt'));
    assert.equal(r.name, 'g.txt');
    assert.equal(r.path, join(base, 'g.txt'));
    assert.equal(r.size, 5);
    await rejectsWith(agent.rename(join(base, 'f.txt'), join(base, 'h.txt')), 'ENOENT');

    await rejectsWith(agent.remove(join(base, 'x')), 'ENOTEMPTY');
    await rejectsWith(agent.remove(join(base, 'nope')), 'ENOENT');
    await agent.remove(join(base, 'g.txt'));
    await agent.remove(join(base, 'link'));
    await agent.remove(join(base, 'x'), { recursive: true });
    assert.deepEqual(await agent.list(base), []);
    await agent.remove(base);
    await rejectsWith(agent.stat(base), 'ENOENT');
    await rejectsWith(agent.remove('/', { recursive: true }), 'EPERM');
    await rejectsWith(agent.remove('/.', { recursive: true }), 'EPERM');
  });

  test('file operations run as the requested user', async () => {
    // The test dir is 0700 root: nobody cannot get in.
    await rejectsWith(agent.writeFile(join(dir, 'nobody.txt'), 'x', { user: 'nobody' }), 'EACCES');
    await rejectsWith(agent.stat(join(dir, 'bytes.bin'), { user: 'nobody' }), 'EACCES');
    const shared = join(dir, 'shared');
    await agent.mkdir(shared, { mode: 0o777 });
    await chmod(dir, 0o711);
    try {
      const e = await agent.writeFile(join(shared, 'sub/own.txt'), 'x', { user: 'nobody' });
      assert.equal(e.uid, 65534);
      assert.equal((await agent.stat(join(shared, 'sub'))).uid, 65534);
    } finally {
      await chmod(dir, 0o700);
    }
  });

  test('paths must be absolute', async () => {
    await rejectsWith(agent.stat('relative/path'), 'EINVAL');
  });
});

describe('dial', () => {
  test('8 MiB each way: an echo, and independent streams in both directions at once', async () => {
    const echo = await tcpServer((s) => s.pipe(s), true);
    const data = randomBytes(8 * 1024 * 1024);
    const s = await agent.dial(echo.port);
    const back = readAll(s);
    s.end(data);
    assert.equal(sha(await back), sha(data));
    await echo.close();

    const down = randomBytes(8 * 1024 * 1024 + 13);
    const up = randomBytes(8 * 1024 * 1024 + 7);
    let received!: Promise<Buffer>;
    const both = await tcpServer((c) => {
      received = readAll(c);
      c.end(down);
    }, true);
    const t = await agent.dial(both.port, { allowHalfOpen: true });
    const got = readAll(t);
    t.end(up);
    assert.equal(sha(await got), sha(down));
    assert.equal(sha(await received), sha(up));
    await both.close();
  });

  test('half-closes pass through both ways', async () => {
    // The host ends first; the server still answers afterwards.
    const a = await tcpServer((c) => void readAll(c).then((b) => c.end(`got ${b}`)), true);
    const s = await agent.dial(a.port, { allowHalfOpen: true });
    const sClosed = once(s, 'close');
    const reply = readAll(s);
    s.end('question');
    assert.equal((await reply).toString(), 'got question');
    await sClosed;
    await a.close();

    // The server ends first; the host still sends afterwards.
    let received!: Promise<Buffer>;
    const b = await tcpServer((c) => {
      received = readAll(c);
      c.end('hello');
    }, true);
    const t = await agent.dial(b.port, { allowHalfOpen: true });
    const tClosed = once(t, 'close');
    assert.equal((await readAll(t)).toString(), 'hello');
    assert.ok(!t.destroyed);
    t.end('late');
    assert.equal((await received).toString(), 'late');
    await tClosed;
    await b.close();
  });

  test('http.request GET through dial, as createConnection', async () => {
    const server = createHttpServer((req, res) => res.end(`${req.method} ${req.url} from ${req.socket.remoteAddress}`));
    const port = await listenLocal(server);
    try {
      for (let i = 0; i < 3; i++) {
        const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = httpRequest(
            {
              path: `/ready?i=${i}`,
              headers: { host: 'sandbox' },
              createConnection: (_opts, cb) => {
                agent.dial(port).then(
                  (sock) => cb(null, sock),
                  (err: Error) => cb(err, null!),
                );
                return undefined;
              },
            },
            (r) => void readAll(r).then((b) => resolve({ status: r.statusCode!, body: b.toString() }), reject),
          );
          req.on('error', reject);
          req.end();
        });
        assert.deepEqual(res, { status: 200, body: `GET /ready?i=${i} from 127.0.0.1` });
      }
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test('an HTTP upgrade (as for WebSockets) through dial', async () => {
    const server = createHttpServer();
    server.on('upgrade', (req, socket, head) => {
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\n\r\n`);
      if (head.length) socket.write(head);
      socket.pipe(socket);
    });
    const port = await listenLocal(server);
    try {
      const s = await agent.dial(port);
      const echoed = await new Promise<string>((resolve, reject) => {
        const req = httpRequest({ createConnection: () => s, path: '/ws', headers: { host: 'sandbox', connection: 'Upgrade', upgrade: 'echo' } });
        req.on('upgrade', (res, socket, head) => {
          assert.equal(res.statusCode, 101);
          readAll(socket).then((b) => resolve(Buffer.concat([head, b]).toString()), reject);
          socket.end('frames after the upgrade');
        });
        req.on('error', reject);
        req.end();
      });
      assert.equal(echoed, 'frames after the upgrade');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  test('bytes that arrive together with OK are not lost', async () => {
    const srv = await tcpServer((c) => c.end('banner\n'));
    for (let i = 0; i < 50; i++) {
      const s = await agent.dial(srv.port);
      // Attached late on purpose: the banner must wait in the socket.
      await sleep(i % 5 === 0 ? 5 : 0);
      assert.equal((await readAll(s)).toString(), 'banner\n');
    }
    await srv.close();
  });

  test('bytes sent right after the request are forwarded once connected', async () => {
    const echo = await tcpServer((s) => s.pipe(s), true);
    const s = connect({ path: sock });
    const all = readAll(s);
    s.end(Buffer.concat([encodeFrame(FrameType.DIAL, encodeRecord([['port', String(echo.port)]])), Buffer.from('early bytes')]));
    const got = await all;
    assert.deepEqual(got.subarray(0, 5), encodeFrame(FrameType.OK));
    assert.equal(got.subarray(5).toString(), 'early bytes');
    await echo.close();
  });

  test('a closed port is ECONNREFUSED', async () => {
    const srv = await tcpServer();
    const port = srv.port;
    await srv.close();
    await rejectsWith(agent.dial(port), 'ECONNREFUSED');
    // ::1 is accepted (refused, or unavailable without IPv6), never EINVAL
    await assert.rejects(agent.dial(port, { host: '::1' }), (e: unknown) => e instanceof AgentError && e.code !== 'EINVAL');
  });

  test('non-loopback hosts and bad ports are EINVAL', async () => {
    const echo = await tcpServer((s) => s.pipe(s));
    for (const host of ['10.0.0.1', '0.0.0.0', '127.0.0.2', 'localhost', '::', '', '127.0.0.1 ']) {
      await rejectsWith(agent.dial(echo.port, { host: host as '::1' }), 'EINVAL');
    }
    for (const port of [0, 70000, 65536, -1, 1.5, NaN]) await rejectsWith(agent.dial(port), 'EINVAL');
    for (const rec of [[], [['port', '']], [['port', '0x50']], [['port', '+80']]] as [string, string][][]) {
      const frames = await raw(encodeFrame(FrameType.DIAL, encodeRecord(rec)));
      assert.equal(frames.length, 1);
      assert.equal(decodeRecord(frames[0]!.payload).get('code'), 'EINVAL');
    }
    await echo.close();
  });

  test('200 concurrent dials', async () => {
    const echo = await tcpServer((s) => s.pipe(s), true);
    const socks = await Promise.all(Array.from({ length: 200 }, () => agent.dial(echo.port)));
    const replies = await Promise.all(
      socks.map((s, i) => {
        const r = readAll(s);
        s.end(`dial ${i}`);
        return r;
      }),
    );
    replies.forEach((r, i) => assert.equal(r.toString(), `dial ${i}`));
    await echo.close();
  });

  test('the agent keeps serving other operations while dials are open', async () => {
    const echo = await tcpServer((s) => s.pipe(s), true);
    const open = await Promise.all(Array.from({ length: 20 }, () => agent.dial(echo.port)));
    await agent.ping(1000);
    const r = await run({ command: ['echo', 'meanwhile'] });
    assert.equal(r.stdout.toString(), 'meanwhile\n');
    assert.equal((await agent.stat(dir)).type, 'dir');
    // and the open dials still work afterwards
    const replies = await Promise.all(
      open.map((s, i) => {
        const back = readAll(s);
        s.end(`still ${i}`);
        return back;
      }),
    );
    replies.forEach((b, i) => assert.equal(b.toString(), `still ${i}`));
    await echo.close();
  });

  test('closing one side closes the other', async () => {
    // The host goes away: the server sees the end, and the agent's socket is gone (writing fails).
    const srv = await tcpServer(undefined, true);
    const s = await agent.dial(srv.port);
    const peer = await srv.next();
    const ended = once(peer, 'end');
    peer.resume();
    s.destroy();
    await ended;
    // The agent closed its TCP socket: our writes get a reset (EPIPE/ECONNRESET), then 'close'.
    const closed = new Promise((r) => peer.once('close', r));
    for (let i = 0; i < 100 && !peer.destroyed; i++) {
      peer.write('anyone there?');
      await sleep(20);
    }
    await closed;

    // The server goes away: the host sees end and close.
    const t = await agent.dial(srv.port);
    const peer2 = await srv.next();
    const tEnded = once(t, 'end');
    const tClosed = once(t, 'close');
    t.resume();
    peer2.destroy();
    await tEnded;
    await tClosed;
    await srv.close();
  });

  test('no fd leak and no zombies in the agent after many dials', async () => {
    const fdsBefore = await agentFds();
    const childrenBefore = await agentChildren();
    const echo = await tcpServer((s) => s.pipe(s), true);
    const closed = await tcpServer();
    await closed.close();
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        Array.from({ length: 40 }, async (_, i) => {
          if (i % 4 === 0) return rejectsWith(agent.dial(closed.port), 'ECONNREFUSED');
          const s = await agent.dial(echo.port);
          if (i % 4 === 1) return void s.destroy(); // abandoned
          const back = readAll(s);
          s.end(randomBytes(1000 * i));
          assert.equal((await back).length, 1000 * i);
        }),
      );
    }
    await echo.close();
    for (let i = 0; (await agentChildren()) > childrenBefore; i++) {
      assert.ok(i < 150, `${await agentChildren()} handlers left, ${childrenBefore} before`);
      await sleep(20);
    }
    assert.equal(await agentFds(), fdsBefore);
  });

  test('an unanswered dial times out on the host', async () => {
    // A fake agent that accepts and never answers.
    const fake = createServer((c) => c.resume()); // reads (and ignores) the request, so it sees our close
    const path = join(dir, 'silent.sock');
    fake.listen(path);
    await once(fake, 'listening');
    try {
      await rejectsWith(new AgentClient(path).dial(80, { timeoutMs: 200 }), 'ETIMEDOUT');
    } finally {
      await new Promise((r) => fake.close(r));
    }
  });
});

describe('protocol', () => {
  test('the frame decoder reassembles frames from any split and bounds their size', () => {
    const frames = [
      encodeFrame(FrameType.STDOUT, randomBytes(70_000)),
      encodeFrame(FrameType.END),
      encodeFrame(
        FrameType.OK,
        encodeRecord([
          ['a', '1'],
          ['a', '2'],
        ]),
      ),
    ];
    const all = Buffer.concat(frames);
    for (const step of [1, 3, 4096, all.length]) {
      const dec = new FrameDecoder();
      const got = [];
      for (let i = 0; i < all.length; i += step) got.push(...dec.push(all.subarray(i, i + step)));
      assert.deepEqual(
        got.map((f) => f.type),
        [FrameType.STDOUT, FrameType.END, FrameType.OK],
      );
      assert.deepEqual(Buffer.concat([got[0]!.payload]), frames[0]!.subarray(5));
      assert.deepEqual(decodeRecord(got[2]!.payload).all('a'), ['1', '2']);
    }
    assert.throws(() => new FrameDecoder().push(Buffer.from([FrameType.STDOUT, 0, 0x10, 0, 1])), /exceeds/);
    assert.throws(() => decodeRecord(Buffer.from('a=1')), /NUL/);
    assert.throws(() => decodeRecord(Buffer.from('noequals\0')), /malformed/);
    assert.throws(() => encodeRecord([['arg', 'a\0b']]), /NUL/);
  });
});

describe('robustness', () => {
  test('malformed frames get EINVAL and do not kill the agent', async () => {
    const cases: Buffer[] = [
      randomBytes(64),
      Buffer.from([0x77, 0, 0, 0, 0]), // not a request type
      Buffer.from([FrameType.EXEC, 0xff, 0xff, 0xff, 0xff]), // longer than 1 MiB
      encodeFrame(FrameType.STAT, Buffer.from('path=/tmp')), // record without its NUL
      encodeFrame(FrameType.STAT, Buffer.from('=x\0')), // empty key
      encodeFrame(FrameType.EXEC, Buffer.from('cwd=/\0')), // no arg
      encodeFrame(
        FrameType.EXEC,
        encodeRecord([
          ['arg', 'true'],
          ['tty', 'yes'],
        ]),
      ),
      Buffer.concat([encodeFrame(FrameType.EXEC, encodeRecord([['arg', 'cat']])), Buffer.from([FrameType.SIGNAL, 0, 0, 0, 1, 9])]),
    ];
    for (const c of cases) {
      const frames = await raw(c);
      const err = frames.find((f) => f.type === FrameType.ERROR);
      if (c[0] === FrameType.EXEC && frames[0]?.type === FrameType.STARTED) {
        assert.ok(err, `no ERROR after a bad frame during EXEC: ${c.toString('hex')}`);
      } else if (frames.length) {
        assert.equal(frames.length, 1);
        assert.equal(frames[0]!.type, FrameType.ERROR);
      }
      if (err) assert.equal(decodeRecord(err.payload).get('code'), 'EINVAL');
    }
    // a truncated frame, then the connection goes away
    await raw(Buffer.from([FrameType.EXEC, 0, 0, 1, 0, 1, 2, 3]));
    assert.equal(agentProc.exitCode, null);
    const r = await run({ command: ['echo', 'still here'] });
    assert.equal(r.stdout.toString(), 'still here\n');
  });

  test('an unreachable agent is EUNAVAILABLE', async () => {
    const c = new AgentClient(join(dir, 'nothing-here.sock'));
    await rejectsWith(c.ping(), 'EUNAVAILABLE');
    await rejectsWith(c.exec({ command: ['true'] }).done, 'EUNAVAILABLE');
    await rejectsWith(c.stat('/'), 'EUNAVAILABLE');
    await rejectsWith(collect(c.readFile('/etc/passwd')), 'EUNAVAILABLE');
    await rejectsWith(c.dial(80), 'EUNAVAILABLE');
  });

  test('a NUL in a request is EINVAL before anything is sent', async () => {
    await rejectsWith(agent.exec({ command: ['echo', 'a\0b'] }).done, 'EINVAL');
  });

  test('the socket is private', async () => {
    assert.equal((await stat(sock)).mode & 0o777, 0o600);
  });
});

describe('parking the listener (gVisor checkpoints)', () => {
  test('SIGUSR1 closes the listener and removes its socket, an open exec goes on; SIGUSR2 listens again', async () => {
    const out: Buffer[] = [];
    const h = agent.exec({ command: ['sh', '-c', 'read line; echo "got $line"'] }, { onStdout: (b) => out.push(b) });
    await h.pid;
    agentProc.kill('SIGUSR1');
    for (let i = 0; existsSync(sock); i++) {
      assert.ok(i < 200, 'the socket is removed');
      await sleep(10);
    }
    await rejectsWith(agent.ping(500), 'EUNAVAILABLE');
    h.writeStdin('x\n');
    h.closeStdin();
    assert.equal((await h.done).exitCode, 0, 'the connection accepted before goes on');
    assert.equal(Buffer.concat(out).toString(), 'got x\n');
    agentProc.kill('SIGUSR1'); // parking twice is a no-op
    agentProc.kill('SIGUSR2');
    await listening();
    agentProc.kill('SIGUSR2'); // so is listening twice
    assert.equal((await run({ command: ['echo', 'back'] })).stdout.toString(), 'back\n');
    assert.equal((await stat(sock)).mode & 0o777, 0o600, 'still private');
  });
});
