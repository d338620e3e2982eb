// moat-init --mux: many agent connections over one process's stdin and stdout, as Moat runs it through one
// pods/exec session per pod on Kubernetes. Here the process is a local child driven by the host's AgentMux, so the
// multiplexing is tested apart from the cluster (test/cluster covers the pods/exec path).
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { halfCloseRoundTrip, run } from './agent-io.js';
import { AgentClient, AgentMux, MuxStream } from '../src/agent/index.js';
import { FrameDecoder, M, MUX_MAX_STREAMS, MUX_WINDOW, T, encodeFrame, encodeMuxFrame, encodeRecord } from '../src/agent/protocol.js';
import { defaultInitBinary } from '../src/paths.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Agent {
  child: ChildProcessWithoutNullStreams;
  mux: AgentMux;
  client: AgentClient;
  /** The process's exit code, once it exited. */
  exited: Promise<number | null>;
  stderr(): string;
}

/** A `moat-init --mux` child with the host's mux over its stdin and stdout. */
function startAgent(): Agent {
  const child = spawn(defaultInitBinary(), ['--mux']);
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const mux = new AgentMux(Duplex.from({ writable: child.stdin, readable: child.stdout }));
  const client = new AgentClient(({ allowHalfOpen }) => {
    const s = new MuxStream({ allowHalfOpen });
    mux.attach(s);
    return s;
  });
  return { child, mux, client, exited, stderr: () => stderr };
}

/** A raw `moat-init --mux` child, for frames the host's mux would never send. */
async function rawAgent(frames: Buffer[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(defaultInitBinary(), ['--mux']);
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout.resume();
  child.stdin.on('error', () => {});
  for (const f of frames) child.stdin.write(f);
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stderr };
}

/** Waits until `pid` is gone (a zombie still answers kill 0, so this also waits for its reaping). */
async function gone(pid: number, ms = 5000): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(20)) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
  }
  return false;
}

async function pidIn(file: string): Promise<number> {
  for (let i = 0; i < 250; i++) {
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (pid) return pid;
    await sleep(20);
  }
  throw new Error(`no pid in ${file}`);
}

let dir: string;
let a: Agent;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moat-mux-'));
  a = startAgent();
  await a.mux.ready;
});
after(async () => {
  a.child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

test('many concurrent streams: execs, 4 MiB through cat and 1 MiB files at once', async () => {
  const big = randomBytes(4 << 20);
  const file = randomBytes(1 << 20);
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 100; i++) {
    ops.push(
      run(a.client, ['sh', '-c', `echo ${i}; exit ${i % 7}`]).then((r) => {
        assert.deepEqual([r.stdout.toString(), r.exitCode], [`${i}\n`, i % 7]);
      }),
    );
  }
  for (let i = 0; i < 4; i++) {
    ops.push(run(a.client, ['cat'], big).then((r) => assert.equal(sha(r.stdout), sha(big))));
    ops.push(
      (async () => {
        const path = join(dir, `f${i}`);
        await a.client.writeFile(path, file);
        const parts: Buffer[] = [];
        for await (const b of a.client.readFile(path)) parts.push(b);
        assert.equal(sha(Buffer.concat(parts)), sha(file));
      })(),
    );
  }
  await Promise.all(ops);
  assert.equal(a.mux.size, 0, 'every stream is closed once its operation is done');
});

test('a stream whose reader stops holds up no other: the agent sends it one window, then waits', async () => {
  // Stream A: 8 MiB of output that nobody reads.
  const stalled = new MuxStream({ allowHalfOpen: false });
  a.mux.attach(stalled);
  const size = 8 << 20;
  stalled.write(
    encodeFrame(
      T.EXEC,
      encodeRecord([
        ['arg', 'head'],
        ['arg', '-c'],
        ['arg', String(size)],
        ['arg', '/dev/zero'],
      ]),
    ),
  );
  // Stream B: stdin that its program never reads.
  const deaf = a.client.exec({ command: ['sleep', '30'] });
  await deaf.pid;
  const flood = randomBytes(4 << 20);
  deaf.writeStdin(flood);
  await sleep(300);
  assert.ok(stalled.readableLength > 0 && stalled.readableLength <= MUX_WINDOW, `buffered ${stalled.readableLength} bytes for a stalled reader`);

  const t0 = Date.now();
  for (let i = 0; i < 20; i++) assert.equal((await run(a.client, ['echo', 'through'])).stdout.toString(), 'through\n');
  assert.ok(Date.now() - t0 < 5000, 'other streams kept working');
  assert.ok(stalled.readableLength <= MUX_WINDOW, 'the stalled stream got no more than its window');

  // Reading again: the windows granted back bring the rest, intact.
  let out = 0;
  let exit: Buffer | undefined;
  const frames = new FrameDecoder();
  stalled.on('data', (c: Buffer) => {
    for (const f of frames.push(c)) {
      if (f.type === T.STDOUT) out += f.payload.length;
      if (f.type === T.EXIT) exit = f.payload;
    }
  });
  await once(stalled, 'end');
  assert.equal(out, size);
  assert.equal(exit?.readInt32BE(0), 0);
  deaf.kill();
  await deaf.done.catch(() => {});
});

test('half-close: a dial’s end() reaches the TCP peer as a FIN, and its answer comes back', async () => {
  const back = await halfCloseRoundTrip(
    (port) => a.client.dial(port, { allowHalfOpen: true }),
    'through the mux',
    (m) => m.toUpperCase(),
  );
  assert.equal(back, 'THROUGH THE MUX');
});

test('abort: destroying a stream mid-transfer kills its program; the channel and other streams go on', async () => {
  const marker = join(dir, 'yes.pid');
  let seen = 0;
  const h = a.client.exec({ command: ['sh', '-c', `echo $$ > ${marker}; exec yes`] }, { onStdout: (b) => (seen += b.length) });
  const pid = await pidIn(marker);
  while (seen < 1 << 20) await sleep(10);
  h.kill(); // closes the connection: a CLOSE for its stream
  await h.done.catch(() => {});
  assert.ok(await gone(pid), 'the program outlived its stream');
  assert.equal((await run(a.client, ['echo', 'still here'])).stdout.toString(), 'still here\n');
});

test('at most MUX_MAX_STREAMS at a time: one more is refused with the reason, and the channel goes on', async () => {
  const open = Array.from({ length: MUX_MAX_STREAMS }, () => {
    const s = new MuxStream({ allowHalfOpen: false });
    a.mux.attach(s);
    return s;
  });
  const refused = new MuxStream({ allowHalfOpen: false });
  a.mux.attach(refused);
  const [err] = (await once(refused, 'error')) as [Error];
  assert.match(err.message, /the sandbox agent closed the connection: too many open streams/);
  for (const s of open) s.destroy();
  await a.client.ping(5000);
});

test('bad frames end the agent with a message saying what was wrong', async () => {
  const ping = encodeMuxFrame(M.DATA, 1, encodeFrame(T.PING));
  const cases: [Buffer[], RegExp][] = [
    [[encodeMuxFrame(M.OPEN, 1), ping, encodeMuxFrame(M.OPEN, 1)], /OPEN of stream 1: ids must increase/],
    [[encodeMuxFrame(0x7f, 1)], /unknown frame type 0x7f/],
    [[Buffer.from([M.DATA, 0, 0, 0, 1, 0, 0x20, 0, 0])], /frame of 2097152 bytes for stream 1 exceeds the 1048576-byte limit/],
    [[encodeMuxFrame(M.DATA, 5, Buffer.from('x'))], /DATA for stream 5, which was never opened/],
    [[encodeMuxFrame(M.OPEN, 1), encodeMuxFrame(M.DATA, 1, Buffer.alloc(MUX_WINDOW + 1))], /bytes of DATA with only 262144 of window/],
  ];
  for (const [frames, message] of cases) {
    const r = await rawAgent(frames);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
  }
});

test('the host refuses an agent that breaks the framing: its streams fail with the reason', async () => {
  const fromAgent = new PassThrough();
  const mux = new AgentMux(Duplex.from({ writable: new PassThrough(), readable: fromAgent }));
  fromAgent.write(encodeMuxFrame(M.HELLO, 0));
  await mux.ready;
  const s = new MuxStream({ allowHalfOpen: false });
  mux.attach(s);
  const failed = once(s, 'error');
  fromAgent.write(encodeMuxFrame(M.DATA, 9, Buffer.from('x')));
  const [err] = (await failed) as [Error];
  assert.match(err.message, /stream 9, which was never opened/);
  assert.equal(mux.closed, true);
});

test('stdin EOF: every stream closes, their programs end, and the agent exits 0 with nothing left behind', async () => {
  const b = startAgent();
  await b.mux.ready;
  const pids: number[] = [];
  const execs = [];
  for (let i = 0; i < 3; i++) {
    const marker = join(dir, `sleep${i}.pid`);
    execs.push(b.client.exec({ command: ['sh', '-c', `echo $$ > ${marker}; exec sleep 60`] }));
    pids.push(await pidIn(marker));
  }
  const t0 = Date.now();
  b.child.stdin.end();
  assert.equal(await b.exited, 0, b.stderr());
  assert.ok(Date.now() - t0 < 3000, 'the agent exited at once');
  for (const e of execs) await assert.rejects(e.done);
  // Reaped before the agent exited, not left as zombies to whatever reaps after it (a pod's PID 1 may never).
  for (const pid of pids) assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `sleep ${pid} outlived the channel`);
  assert.equal(b.stderr(), '');
});
