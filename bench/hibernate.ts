// Pause/resume, hibernate and wake, per runtime, for a sandbox whose main command is a Python process holding 200 MiB:
// pause and resume latency (API call; for runc also raw `runc pause`/`resume` of the same container as the baseline),
// hibernate latency (API call), wake latency (hibernated → first exec result), host memory freed, saved state size.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '@moat/runtime';
import { NS, execApi, sandboxBody, startTestServer, type TestServer } from '../test/helpers/server.js';
import { row, time } from './stats.js';

const N = Number(process.env.BENCH_HIBERNATE ?? 3);
const RUNTIMES = (process.env.BENCH_RUNTIMES ?? 'runc,gvisor,microvm').split(',').filter(Boolean);
const MiB = 2 ** 20;

/** 200 MiB of non-zero bytes (zero pages would cost nothing to save), then a token served on a unix socket. */
const HOLDER = `import os, secrets, socket
ballast = bytearray(os.urandom(1 << 20)) * 200
token = secrets.token_hex(8)
s = socket.socket(socket.AF_UNIX)
s.bind("/tmp/holder.sock")
s.listen(8)
while True:
    c, _ = s.accept()
    c.sendall(f"{os.getpid()} {token} {len(ballast)}".encode())
    c.close()
`;
const ASK = ['python3', '-c', 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/tmp/holder.sock"); print(s.recv(200).decode())'];

/** Bytes the host charges to the sandbox's cgroup; 0 once it is gone. */
async function hostMemory(uid: string): Promise<number> {
  for (const f of [`/sys/fs/cgroup/moat/${uid}/memory.current`, `/sys/fs/cgroup/memory/moat/${uid}/memory.usage_in_bytes`]) {
    const text = await readFile(f, 'utf8').catch(() => undefined);
    if (text !== undefined) return Number(text.trim());
  }
  return 0;
}

async function ask(server: TestServer, name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await execApi(server, name, { command: ASK });
    if (r.exit?.exitCode === 0 && r.stdout.trim()) return r.stdout.trim();
    if (Date.now() > deadline) throw new Error(`the 200 MiB process does not answer: ${r.stderr} ${JSON.stringify(r.error ?? r.exit)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

async function benchOne(server: TestServer, runtime: string) {
  const pause: number[] = [];
  const resume: number[] = [];
  const rawPause: number[] = [];
  const rawResume: number[] = [];
  const hib: number[] = [];
  const wake: number[] = [];
  const freed: number[] = [];
  const saved: number[] = [];
  let mode = '';
  let kept = 0;
  for (let i = 0; i < N; i++) {
    const name = `hib-${runtime}-${i}`;
    await server.api(NS, { method: 'POST', json: sandboxBody(name, { runtime, command: ['python3', '-c', HOLDER] }) });
    const w = await server.api(`${NS}/${name}/wait?timeoutSeconds=900`);
    if (w.status !== 200) throw new Error(`${runtime}: ${await w.text()}`);
    const uid = ((await w.json()) as { metadata: { uid: string } }).metadata.uid;
    const before = await ask(server, name, 120_000);
    await new Promise((r) => setTimeout(r, 500));
    const used = await hostMemory(uid);

    const post = async (action: string) => {
      const res = await server.api(`${NS}/${name}/${action}`, { method: 'POST' });
      if (res.status !== 200) throw new Error(`${action}: ${await res.text()}`);
      return res.json();
    };
    pause.push(await time(() => post('pause')));
    resume.push(await time(() => post('resume')));
    if (runtime === 'runc') {
      const runc = (cmd: string) => run('runc', ['--root', join(server.dataDir, 'runtime', 'runc'), cmd, uid]);
      rawPause.push(await time(() => runc('pause')));
      rawResume.push(await time(() => runc('resume')));
    }

    let status: any;
    hib.push(
      await time(async () => {
        const res = await server.api(`${NS}/${name}/hibernate`, { method: 'POST' });
        if (res.status !== 200) throw new Error(`hibernate: ${await res.text()}`);
        status = await res.json();
      }),
    );
    const c = status.status.conditions.find((x: any) => x.type === 'Hibernated');
    mode = c.reason === 'Checkpointed' ? 'Checkpointed' : `StoppedWithDisks (${c.message.replace(/^.*memory was not saved: /, '').slice(0, 90)}...)`;
    const bytes = /\((\d+) bytes\)/.exec(c.message)?.[1];
    if (bytes) saved.push(Number(bytes) / MiB);
    freed.push((used - (await hostMemory(uid))) / MiB);

    let after = '';
    wake.push(
      await time(async () => {
        after = await ask(server, name, 120_000);
      }),
    );
    if (after === before) kept++;
    await server.api(`${NS}/${name}?wait=true`, { method: 'DELETE' });
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  console.log(`\n${runtime}: ${mode}; same process and memory after wake in ${kept}/${N}`);
  row('pause (API call)', pause, rawPause.length ? rawPause : undefined);
  row('resume (API call)', resume, rawResume.length ? rawResume : undefined);
  if (rawPause.length) {
    row('baseline: raw runc pause', rawPause);
    row('baseline: raw runc resume', rawResume);
  }
  row('hibernate (API call)', hib);
  row('wake (hibernated → first exec result)', wake);
  console.log(`  host memory freed by hibernate                mean ${mean(freed).toFixed(1)} MiB (min ${Math.min(...freed).toFixed(1)})`);
  if (saved.length) console.log(`  saved state on disk                           mean ${mean(saved).toFixed(1)} MiB`);
}

export async function benchHibernate() {
  console.log(`hibernate / wake of a sandbox with a 200 MiB Python process (n=${N} per runtime)`);
  const server = await startTestServer();
  try {
    for (const runtime of RUNTIMES) await benchOne(server, runtime);
  } finally {
    await server.close();
  }
}
