// Density: idle sandboxes held on this host until the first failure (or a cap), host memory per idle sandbox,
// create throughput at concurrency 8, and exec latency with all of them running. Baselines in the same run:
// raw `runc run` of the same image, and bubblewrap.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageStore } from '@moat/runtime';
import { NS, execApi, sandboxBody, sharedImagesDir, startTestServer, testRuntimes, type TestServer } from '../test/helpers/server.js';
import { row, summary, time } from './stats.js';

const WIDTH = 8;
const CAPS: Record<string, number> = {
  runc: Number(process.env.BENCH_DENSITY_RUNC ?? 2000),
  gvisor: Number(process.env.BENCH_DENSITY_GVISOR ?? 200),
  microvm: Number(process.env.BENCH_DENSITY_MICROVM ?? 50),
};
const BASELINE = Number(process.env.BENCH_DENSITY_BASELINE ?? 200);
const MiB = 2 ** 20;

/** What the host has left: the kernel's estimate of memory available without swapping. */
async function available(): Promise<number> {
  const meminfo = await readFile('/proc/meminfo', 'utf8');
  return Number(/^MemAvailable:\s+(\d+) kB/m.exec(meminfo)![1]) * 1024;
}

/** Memory the host gave to `n` things made by `make`: MemAvailable before and after, once settled. */
async function held(n: number, make: () => Promise<number>): Promise<{ made: number; perItem: number; seconds: number }> {
  const before = await available();
  const t0 = performance.now();
  const made = await make();
  const seconds = (performance.now() - t0) / 1000;
  await sleep(2000);
  return { made, perItem: (before - (await available())) / Math.max(made, 1), seconds };
}

/** Runs `fn(i)` for i in 0..n-1, WIDTH at a time, until the first failure; returns how many succeeded. */
async function widely(n: number, fn: (i: number) => Promise<void>, onError: (i: number, err: unknown) => void): Promise<number> {
  let next = 0;
  let ok = 0;
  let failed = false;
  await Promise.all(
    Array.from({ length: WIDTH }, async () => {
      while (!failed && next < n) {
        const i = next++;
        try {
          await fn(i);
          ok++;
        } catch (err) {
          failed = true;
          onError(i, err);
        }
      }
    }),
  );
  return ok;
}

async function baselineRunc(layer: string) {
  const dir = await mkdtemp(join(tmpdir(), 'moat-bench-density-'));
  const root = join(dir, 'state');
  try {
    spawnSync('runc', ['spec', '--bundle', dir]);
    const spec = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    spec.root = { path: layer, readonly: true };
    spec.process.terminal = false;
    spec.process.args = ['sleep', 'infinity'];
    await writeFile(join(dir, 'config.json'), JSON.stringify(spec));
    const r = await held(BASELINE, () =>
      widely(
        BASELINE,
        (i) =>
          new Promise<void>((resolve, reject) => {
            const c = spawn('runc', ['--root', root, 'run', '--detach', '--bundle', dir, `d${i}`], { stdio: 'ignore' });
            c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`runc run exited ${code}`))));
          }),
        (i, err) => console.log(`  raw runc: container ${i} failed: ${(err as Error).message}`),
      ),
    );
    for (let i = 0; i < r.made; i++) spawnSync('runc', ['--root', root, 'delete', '--force', `d${i}`], { stdio: 'ignore' });
    return r;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function baselineBwrap(layer: string) {
  const children: ChildProcess[] = [];
  const r = await held(BASELINE, () =>
    widely(
      BASELINE,
      async (i) => {
        const c = spawn('bwrap', ['--ro-bind', layer, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '--die-with-parent', 'sleep', 'infinity'], {
          stdio: 'ignore',
        });
        children.push(c);
        await sleep(5); // it is up once it did not exit at once
        if (c.exitCode !== null) throw new Error(`bwrap ${i} exited ${c.exitCode}`);
      },
      (i, err) => console.log(`  bwrap: sandbox ${i} failed: ${(err as Error).message}`),
    ),
  );
  for (const c of children) c.kill('SIGKILL');
  return r;
}

async function density(server: TestServer, runtime: string, cap: number) {
  const names: string[] = [];
  const r = await held(cap, () =>
    widely(
      cap,
      async (i) => {
        const name = `dense-${runtime}-${i}`;
        const res = await server.api(NS, { method: 'POST', json: sandboxBody(name, { runtime, limits: { memory: '64Mi' } }) });
        if (res.status !== 201) throw new Error(`${res.status} ${await res.text()}`);
        names.push(name);
        const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=600`);
        if (wait.status !== 200) throw new Error(`${wait.status} ${await wait.text()}`);
      },
      (i, err) => console.log(`  ${runtime}: sandbox ${i} failed: ${(err as Error).message.slice(0, 300)}`),
    ),
  );
  const exec: number[] = [];
  for (let i = 0; i < 200 && r.made; i++) {
    const name = names[Math.floor(Math.random() * r.made)]!;
    exec.push(await time(() => execApi(server, name, { command: ['true'] })));
  }
  await widely(
    names.length,
    (i) => server.api(`${NS}/${names[i]}?wait=true`, { method: 'DELETE' }).then(() => {}),
    () => {},
  );
  return { ...r, exec };
}

const line = (label: string, r: { made: number; perItem: number; seconds: number }, cap: number) =>
  console.log(
    `  ${label.padEnd(28)} ${String(r.made).padStart(5)} held${r.made < cap ? ' (stopped at the first failure)' : ` (the cap, ${cap})`}; ${(r.perItem / MiB).toFixed(2)} MiB host memory each; ${(r.made / r.seconds).toFixed(1)} creates/s at concurrency ${WIDTH}`,
  );

export async function benchDensity() {
  console.log('\n== density (idle sandboxes on this host) ==');
  const image = await new ImageStore(sharedImagesDir()).ensureCatalog('base');
  console.log('  baselines (same run, same image):');
  line('raw `runc run`', await baselineRunc(image.layers[0]!), BASELINE);
  line('bubblewrap', await baselineBwrap(image.layers[0]!), BASELINE);
  const server = await startTestServer();
  try {
    for (const { runtime, skip } of testRuntimes()) {
      if (skip) {
        console.log(`  ${runtime}: skipped (${skip})`);
        continue;
      }
      const d = await density(server, runtime, CAPS[runtime] ?? 50);
      line(`moat ${runtime}`, d, CAPS[runtime] ?? 50);
      const e = row(`  exec of true with ${d.made} running`, d.exec);
      if (runtime === 'runc')
        console.log(
          `  targets (runc): ≥ 1000 idle: ${d.made >= 1000 ? 'met' : 'MISSED'}; ≤ 1.5 MiB each: ${d.perItem <= 1.5 * MiB ? 'met' : 'MISSED'}; ≥ 20 creates/s: ${d.made / d.seconds >= 20 ? 'met' : 'MISSED'}; exec p50 ≤ 5 ms: ${e.p50 <= 5 ? 'met' : 'MISSED'} (p99 ${summary(d.exec).p99.toFixed(1)} ms)`,
        );
    }
  } finally {
    await server.close();
  }
}
