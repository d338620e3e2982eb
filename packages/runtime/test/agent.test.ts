import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
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

before(async () => {
  assert.ok(existsSync(BIN), `${BIN} is missing: run make -C packages/agent`);
  dir = await mkdtemp(join(tmpdir(), 'moat-agent-test-'));
  sock = join(dir, 'agent.sock');
  agentProc = spawn(BIN, ['--socket', sock], { stdio: ['ignore', 'inherit', 'inherit'] });
  agent = new AgentClient(sock);
  for (let i = 0; ; i++) {
    try {
      await agent.ping(500);
      break;
    } catch (e) {
      if (i > 200) throw e;
      await sleep(10);
    }
  }
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
    console.log(`exec latency over 200 sequential \`true\`: median ${times[100]!.toFixed(2)} ms, p90 ${times[180]!.toFixed(2)} ms, min ${times[0]!.toFixed(2)} ms`);
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
    const src = Readable.from((function* () {
      for (let i = 0; i < big.length; i += 100_003) yield big.subarray(i, i + 100_003);
    })());
    const e2 = await agent.writeFile(join(dir, 'a/b/c/big.bin'), src, { mode: 0o600 });
    assert.equal(e2.size, big.length);
    assert.equal(e2.mode, 0o600);
    assert.equal(sha(await readFile(join(dir, 'a/b/c/big.bin'))), sha(big));
    assert.equal(((await stat(join(dir, 'a/b'))).mode & 0o777), 0o755);
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
    assert.deepEqual(items.map((i) => [i.name, i.type]), [['f.txt', 'file'], ['link', 'symlink'], ['x', 'dir']]);
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

describe('protocol', () => {
  test('the frame decoder reassembles frames from any split and bounds their size', () => {
    const frames = [encodeFrame(FrameType.STDOUT, randomBytes(70_000)), encodeFrame(FrameType.END), encodeFrame(FrameType.OK, encodeRecord([['a', '1'], ['a', '2']]))];
    const all = Buffer.concat(frames);
    for (const step of [1, 3, 4096, all.length]) {
      const dec = new FrameDecoder();
      const got = [];
      for (let i = 0; i < all.length; i += step) got.push(...dec.push(all.subarray(i, i + step)));
      assert.deepEqual(got.map((f) => f.type), [FrameType.STDOUT, FrameType.END, FrameType.OK]);
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
      encodeFrame(FrameType.EXEC, encodeRecord([['arg', 'true'], ['tty', 'yes']])),
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
  });

  test('a NUL in a request is EINVAL before anything is sent', async () => {
    await rejectsWith(agent.exec({ command: ['echo', 'a\0b'] }).done, 'EINVAL');
  });

  test('the socket is private', async () => {
    assert.equal((await stat(sock)).mode & 0o777, 0o600);
  });
});
