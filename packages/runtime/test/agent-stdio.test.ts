// moat-init --stdio: one agent connection over a process's stdin and stdout, for a host that can start a process
// in the sandbox but not reach its socket (agent-mux.test.ts: many connections, as Moat runs it on Kubernetes).
// Here the process is a local child, so the agent protocol is tested apart from any cluster.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { halfCloseRoundTrip, run } from './agent-io.js';
import { AgentClient, type AgentTransport } from '../src/agent/index.js';

const BIN = process.env.MOAT_INIT_BINARY ?? fileURLToPath(new URL('../../agent/build/moat-init', import.meta.url));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * Every connection is its own `moat-init --stdio` process, as a pods/exec call of it would be. Like a pods/exec stream,
 * its output ends after the last answer, whatever became of its stdin (the process may exit before that pipe is
 * closed on our side: that is not an error of the connection).
 */
const stdio: AgentTransport = ({ allowHalfOpen }) => {
  const child = spawn(BIN, ['--stdio'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const stream = new Duplex({
    allowHalfOpen,
    write(chunk: Buffer, _enc, cb) {
      child.stdin.write(chunk, () => cb());
    },
    final(cb) {
      child.stdin.end();
      cb();
    },
    read() {
      child.stdout.resume();
    },
    destroy(err, cb) {
      child.kill('SIGKILL');
      cb(err);
    },
  });
  child.stdin.on('error', () => {});
  child.stdout.on('data', (b: Buffer) => {
    if (!stream.push(b)) child.stdout.pause();
  });
  child.stdout.on('end', () => stream.push(null));
  child.once('spawn', () => stream.emit('connect'));
  child.once('error', (err) => stream.destroy(err));
  return stream;
};

let dir: string;
const agent = new AgentClient(stdio);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moat-stdio-'));
});
after(() => rm(dir, { recursive: true, force: true }));

test('ping, and exec with its exit code and output', async () => {
  await agent.ping();
  const r = await run(agent, ['sh', '-c', 'echo hello; exit 3']);
  assert.equal(r.exitCode, 3);
  assert.equal(r.stdout.toString(), 'hello\n');
});

test('a request without a user runs as the caller, not as root', async () => {
  const r = await run(agent, ['id', '-u']);
  assert.equal(r.stdout.toString().trim(), String(process.geteuid!()));
});

test('4 MiB through cat: input and output flow at once without deadlock', async () => {
  const data = randomBytes(4 << 20);
  const r = await run(agent, ['cat'], data);
  assert.equal(r.exitCode, 0);
  assert.equal(sha(r.stdout), sha(data));
});

test('files: write, read, list, stat', async () => {
  const data = randomBytes(3 << 20);
  const path = join(dir, 'blob');
  await agent.writeFile(path, data);
  assert.equal(sha(await readFile(path)), sha(data));
  const parts: Buffer[] = [];
  for await (const b of agent.readFile(path)) parts.push(b);
  assert.equal(sha(Buffer.concat(parts)), sha(data));
  assert.deepEqual(
    (await agent.list(dir)).map((e) => e.name),
    ['blob'],
  );
  assert.equal((await agent.stat(path)).size, data.length);
});

test('dial: an echo, and a half-close passes through', async () => {
  const back = await halfCloseRoundTrip(
    (port) => agent.dial(port, { allowHalfOpen: true }),
    'ping through stdio',
    (m) => m,
  );
  assert.equal(back, 'ping through stdio');
});

test('a dropped connection kills what the exec started', async () => {
  const marker = join(dir, 'pid');
  const h = agent.exec({ command: ['sh', '-c', `echo $$ > ${marker}; exec sleep 60`] });
  await h.pid;
  let pid = 0;
  for (let i = 0; i < 100 && !pid; i++) {
    pid = Number((await readFile(marker, 'utf8').catch(() => '')).trim());
    if (!pid) await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(pid > 0);
  h.kill();
  await h.done.catch(() => {});
  const deadline = Date.now() + 3000;
  let alive = true;
  while (alive && Date.now() < deadline) {
    try {
      process.kill(pid, 0);
      await new Promise((r) => setTimeout(r, 20));
    } catch {
      alive = false;
    }
  }
  assert.equal(alive, false, 'the exec’s program outlived its connection');
});
