// Core figures: cold create → first exec, exec round trip, idle memory; raw runc in the same run as the baseline.
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageStore } from '@moat/runtime';
import { NS, execApi, sandboxBody, sharedImagesDir, startTestServer } from '../test/helpers/server.js';
import { row, summary, time } from './stats.js';

const N_CREATE = Number(process.env.BENCH_CREATE ?? 20);
const N_EXEC = Number(process.env.BENCH_EXEC ?? 200);
const N_IDLE = Number(process.env.BENCH_IDLE ?? 10);

function runc(args: string[]) {
  // A detached container inherits runc's stdio: a pipe would never close.
  const r = spawnSync('runc', args, { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`runc ${args.join(' ')} failed with exit ${r.status}`);
}

/** Raw runc on a plain bundle over the same image: what Moat is compared with. */
export async function rawRunc() {
  const image = await new ImageStore(sharedImagesDir()).ensureCatalog('base');
  const dir = await mkdtemp(join(tmpdir(), 'moat-bench-runc-'));
  const root = join(dir, 'state');
  try {
    spawnSync('runc', ['spec', '--bundle', dir]);
    const spec = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    spec.root = { path: image.layers[0], readonly: true }; // a catalog image is one layer
    spec.process.terminal = false;
    spec.process.args = ['true'];
    await writeFile(join(dir, 'config.json'), JSON.stringify(spec));
    const run: number[] = [];
    for (let i = 0; i < N_CREATE; i++) run.push(await time(async () => runc(['--root', root, 'run', '--bundle', dir, `b${i}`])));
    spec.process.args = ['sleep', 'infinity'];
    await writeFile(join(dir, 'config.json'), JSON.stringify(spec));
    runc(['--root', root, 'run', '--detach', '--bundle', dir, 'idle']);
    const exec: number[] = [];
    for (let i = 0; i < Math.min(N_EXEC, 100); i++) exec.push(await time(async () => runc(['--root', root, 'exec', 'idle', 'true'])));
    runc(['--root', root, 'delete', '--force', 'idle']);
    return { run, exec };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function benchCore() {
  console.log('\n== core (runc runtime class) ==');
  const raw = await rawRunc();
  const server = await startTestServer();
  try {
    // Warm the image and the code paths once.
    await server.api(NS, { method: 'POST', json: sandboxBody('warmup') });
    await server.api(`${NS}/warmup/wait?timeoutSeconds=120`);

    const create: number[] = [];
    for (let i = 0; i < N_CREATE; i++) {
      const name = `cold-${i}`;
      create.push(
        await time(async () => {
          await server.api(NS, { method: 'POST', json: sandboxBody(name) });
          await server.api(`${NS}/${name}/wait?timeoutSeconds=60`);
          const r = await execApi(server, name, { command: ['true'] });
          if (r.exit?.exitCode !== 0) throw new Error(`exec failed: ${JSON.stringify(r)}`);
        }),
      );
      await server.api(`${NS}/${name}?wait=true`, { method: 'DELETE' });
    }
    const exec: number[] = [];
    for (let i = 0; i < N_EXEC; i++) exec.push(await time(() => execApi(server, 'warmup', { command: ['true'] })));

    console.log('  baseline (same run, same image):');
    row('raw `runc run` of true', raw.run);
    row('raw `runc exec` of true', raw.exec);
    console.log('  moat:');
    const c = row('cold create → first exec result (API)', create, raw.run);
    const e = row('exec round trip of true (API, NDJSON)', exec, raw.exec);
    console.log(
      `  targets: create→exec p50 ≤ 150 ms: ${c.p50 <= 150 ? 'met' : 'MISSED'}; exec p50 ≤ 15 ms and below raw runc exec: ${e.p50 <= 15 && e.p50 < summary(raw.exec).p50 ? 'met' : 'MISSED'}`,
    );

    // Idle memory: what Moat adds per sandbox is moat-init (no shim: runc exits after start).
    const names = Array.from({ length: N_IDLE }, (_, i) => `idle-${i}`);
    await Promise.all(names.map((n) => server.api(NS, { method: 'POST', json: sandboxBody(n) })));
    await Promise.all(names.map((n) => server.api(`${NS}/${n}/wait?timeoutSeconds=120`)));
    await new Promise((r) => setTimeout(r, 500));
    const rss: number[] = [];
    const cgroup: number[] = [];
    for (const n of names) {
      const s = (await (await server.api(`${NS}/${n}`)).json()) as { status: { resourceUsage: { memoryBytes: number } } };
      cgroup.push(s.status.resourceUsage.memoryBytes / 2 ** 20);
      const r = await execApi(server, n, { command: ['sh', '-c', 'grep VmRSS /proc/1/status'] });
      rss.push(Number(/(\d+)/.exec(r.stdout)?.[1] ?? NaN) / 1024);
    }
    const med = (a: number[]) => summary(a).p50;
    console.log(
      `  idle sandbox: moat-init RSS ${med(rss).toFixed(2)} MiB (target ≤ 5 MiB beyond the workload: ${med(rss) <= 5 ? 'met' : 'MISSED'}); cgroup memory usage ${med(cgroup).toFixed(1)} MiB (n=${N_IDLE})`,
    );
    await Promise.all(names.map((n) => server.api(`${NS}/${n}?wait=true`, { method: 'DELETE' })));
  } finally {
    await server.close();
  }
}
