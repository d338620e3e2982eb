// PodMux: the channel of one pod (on Kubernetes, a pods/exec session of `moat-init --mux`). Here each channel is a
// local `moat-init --mux` child, and "the kubelet cannot find the binary" is the child's ENOENT, so the install and
// restart, the connections waiting for it and a dropped channel are tested apart from the cluster.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { AgentClient, defaultInitBinary } from '@moat/runtime';
import { ExecFailure } from '../src/backends/kubernetes/pod-exec.js';
import { PodMux } from '../src/backends/kubernetes/pod-mux.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moat-podmux-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/** Starts `path --mux` as a channel, failing as pods/exec does when the program is missing. */
function channelAt(path: string, started: ChildProcess[]) {
  return () => {
    const child = spawn(path, ['--mux'], { stdio: ['pipe', 'pipe', 'inherit'] });
    started.push(child);
    const channel = Duplex.from({ writable: child.stdin, readable: child.stdout });
    child.once('error', (err: NodeJS.ErrnoException) => channel.destroy(new ExecFailure(err.message, err.code === 'ENOENT')));
    return channel;
  };
}

const clientOf = (mux: PodMux) => new AgentClient(({ allowHalfOpen }) => mux.open(allowHalfOpen));

test('a missing agent is installed and started again; connections opened meanwhile wait for it', async () => {
  const path = join(dir, 'moat-init');
  const started: ChildProcess[] = [];
  let installs = 0;
  const mux = new PodMux(channelAt(path, started), async () => {
    installs++;
    await copyFile(defaultInitBinary(), path);
  });
  const agent = clientOf(mux);
  const outputs = await Promise.all(
    [1, 2, 3].map(async (i) => {
      const out: Buffer[] = [];
      await agent.exec({ command: ['echo', String(i)] }, { onStdout: (b) => out.push(b) }).done;
      return Buffer.concat(out).toString();
    }),
  );
  assert.deepEqual(outputs, ['1\n', '2\n', '3\n']);
  assert.equal(installs, 1);
  assert.equal(started.length, 2, 'one failed start, then one agent for every connection');
  mux.close();
  await once(started[1]!, 'exit');
});

test('a dropped channel fails its connections and says it closed (PodAgents then starts another)', async () => {
  const started: ChildProcess[] = [];
  const mux = new PodMux(channelAt(defaultInitBinary(), started), () => Promise.reject(new Error('no install expected')));
  const agent = clientOf(mux);
  const sleeping = agent.exec({ command: ['sleep', '60'] });
  await sleeping.pid;
  const closed = once(mux, 'close');
  started[0]!.kill('SIGKILL');
  await assert.rejects(sleeping.done, /connection to the sandbox agent/);
  await closed;
  assert.equal(mux.closed, true);
  await assert.rejects(agent.ping(), /connection to the sandbox agent/);
});

test('a channel that cannot start fails the connections waiting for it with the reason', async () => {
  const mux = new PodMux(channelAt(join(dir, 'nowhere', 'moat-init'), []), () => Promise.reject(new Error('cannot install: the image has no /bin/sh')));
  await assert.rejects(clientOf(mux).ping(), /cannot install: the image has no \/bin\/sh/);
  assert.equal(mux.closed, true);
});
