// Strong-isolation runtimes: cold create → first exec, exec round trip and host memory per idle sandbox for
// gvisor and microvm; baselines in the same run: raw `runsc run` and a raw QEMU boot of the same guest kernel;
// the cost of system calls under gVisor: a stat() loop in a gvisor sandbox against the same in a runc one.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GvisorDriver, ImageStore, defaultInitBinary, ensureGuestBoot, hostTscKhz, type GvisorPlatform } from '@moat/runtime';
import { NS, execApi, sandboxBody, sharedImagesDir, startTestServer, type TestServer } from '../test/helpers/server.js';
import { row, summary, time } from './stats.js';

const N_CREATE = Number(process.env.BENCH_CREATE ?? 10);
const N_EXEC = Number(process.env.BENCH_EXEC ?? 50);
const N_IDLE = Number(process.env.BENCH_IDLE ?? 5);
const N_BOOT = Number(process.env.BENCH_BOOT ?? 3);
const N_STAT = Number(process.env.BENCH_STAT ?? 3);

/** 100,000 stat() calls, timed by Python itself inside the sandbox (its start-up not counted): milliseconds. */
const STAT_LOOP = `python3 -c 'import os, time; t = time.perf_counter(); [os.stat("/") for _ in range(100000)]; print((time.perf_counter() - t) * 1000)'`;

async function rawRunsc(platform: GvisorPlatform): Promise<number[]> {
  const image = await new ImageStore(sharedImagesDir()).ensureCatalog('base');
  const dir = await mkdtemp(join(tmpdir(), 'moat-bench-runsc-'));
  try {
    spawnSync('runsc', ['spec', '--bundle', dir]);
    const spec = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    spec.root = { path: image.layers[0], readonly: true }; // a catalog image is one layer
    spec.process.terminal = false;
    spec.process.args = ['true'];
    await writeFile(join(dir, 'config.json'), JSON.stringify(spec));
    const runs: number[] = [];
    for (let i = 0; i < N_CREATE; i++) {
      runs.push(
        await time(async () => {
          const r = spawnSync('runsc', ['--root', join(dir, 'state'), `--platform=${platform}`, '--network=none', 'run', '--bundle', dir, `b${i}`], {
            stdio: 'ignore',
          });
          if (r.status !== 0) throw new Error(`runsc run failed with exit ${r.status}`);
        }),
      );
    }
    return runs;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The guest kernel and initramfs Moat uses, booted to the marker its /init prints first: no snapshot, no Moat. */
async function rawQemuBoot(accel: 'kvm' | 'tcg'): Promise<number[]> {
  const boot = await ensureGuestBoot({
    cacheDir: join(sharedImagesDir(), 'microvm'),
    initBinary: defaultInitBinary(),
    guestInit: fileURLToPath(new URL('../packages/guest/init', import.meta.url)),
  });
  // As the driver boots it: under TCG the guest is told the host's TSC frequency, or its calibration hangs when busy.
  const tscKhz = accel === 'tcg' ? await hostTscKhz() : undefined;
  const runs: number[] = [];
  // A boot whose clock calibration failed on this busy host hangs (see vm/snapshot.ts): given up after 60 s and not counted.
  for (let i = 0, failures = 0; i < N_BOOT;) {
    const t = await time(
      () =>
        new Promise<void>((resolve, reject) => {
          const q = spawn(
            'qemu-system-x86_64',
            [
              '-accel',
              accel,
              '-M',
              'microvm',
              '-m',
              '256M',
              '-nodefaults',
              '-no-user-config',
              '-display',
              'none',
              '-no-reboot',
              '-serial',
              'stdio',
              '-kernel',
              boot.kernel,
              '-initrd',
              boot.initrd,
              '-append',
              `console=ttyS0 quiet panic=-1 moat.probe${tscKhz ? ` tsc_early_khz=${tscKhz}` : ''}`,
            ],
            { stdio: ['ignore', 'pipe', 'ignore'] },
          );
          let out = '';
          q.stdout.on('data', (d: Buffer) => {
            out += d;
            if (out.includes('probe ok')) q.kill('SIGKILL');
          });
          const timer = setTimeout(() => q.kill('SIGKILL'), 60_000);
          q.on('exit', () => {
            clearTimeout(timer);
            if (out.includes('probe ok')) resolve();
            else reject(new Error(`raw QEMU boot did not reach the marker: ${out.slice(-200)}`));
          });
        }),
    ).catch((err: Error) => {
      if (++failures >= 3) throw err;
      return undefined;
    });
    if (t !== undefined) {
      runs.push(t);
      i++;
    }
  }
  return runs;
}

/** Host memory of an idle sandbox: the proportional set size of every process in its cgroup (QEMU, or runsc's sentry and gofer). */
async function hostMemoryMiB(uid: string): Promise<{ total: number; beyondGuestRam: number }> {
  const procs = (
    await readFile(`/sys/fs/cgroup/memory/moat/${uid}/cgroup.procs`, 'utf8').catch(() => readFile(`/sys/fs/cgroup/moat/${uid}/cgroup.procs`, 'utf8'))
  )
    .split('\n')
    .filter(Boolean);
  let total = 0;
  let guestRam = 0;
  for (const pid of procs) {
    let mapping = '';
    for (const line of (await readFile(`/proc/${pid}/smaps`, 'utf8').catch(() => '')).split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) mapping = line;
      const pss = /^Pss:\s+(\d+) kB/.exec(line);
      if (!pss) continue;
      total += Number(pss[1]) / 1024;
      // A microVM's RAM is its snapshot's `ram` file, mapped private.
      if (/\/snapshots\/[^/]+\/ram$/.test(mapping)) guestRam += Number(pss[1]) / 1024;
    }
  }
  return { total, beyondGuestRam: total - guestRam };
}

/** The stat() loop, N_STAT times in one sandbox of each runtime class: the same image, limits and server. */
async function statLoops(server: TestServer, runtimes: string[]): Promise<Record<string, number[]>> {
  const out: Record<string, number[]> = {};
  for (const runtime of runtimes) {
    const name = `stat-${runtime}`;
    await server.api(NS, { method: 'POST', json: sandboxBody(name, { runtime, limits: { memory: '256Mi' } }) });
    const w = await server.api(`${NS}/${name}/wait?timeoutSeconds=120`);
    if (w.status !== 200) throw new Error(`${runtime} stat sandbox: ${await w.text()}`);
    out[runtime] = [];
    for (let i = 0; i < N_STAT; i++) {
      const r = await execApi(server, name, { command: ['sh', '-c', STAT_LOOP] });
      if (r.exit?.exitCode !== 0) throw new Error(`stat loop failed in ${runtime}: ${r.stderr}`);
      out[runtime].push(Number(r.stdout.trim()));
    }
    await server.api(`${NS}/${name}?wait=true`, { method: 'DELETE' });
  }
  return out;
}

async function benchRuntime(server: TestServer, runtime: 'gvisor' | 'microvm', baseline?: number[]) {
  const body = (name: string) => sandboxBody(name, { runtime, limits: { memory: '256Mi' } });
  // The first microVM of a shape makes its snapshot; not what is measured.
  await server.api(NS, { method: 'POST', json: body('warmup') });
  const w = await server.api(`${NS}/warmup/wait?timeoutSeconds=900`);
  if (w.status !== 200) throw new Error(`${runtime} warmup: ${await w.text()}`);
  const create: number[] = [];
  for (let i = 0; i < N_CREATE; i++) {
    const name = `cold-${i}`;
    create.push(
      await time(async () => {
        await server.api(NS, { method: 'POST', json: body(name) });
        await server.api(`${NS}/${name}/wait?timeoutSeconds=120`);
        const r = await execApi(server, name, { command: ['true'] });
        if (r.exit?.exitCode !== 0) throw new Error(`exec failed: ${JSON.stringify(r)}`);
      }),
    );
    await server.api(`${NS}/${name}?wait=true`, { method: 'DELETE' });
  }
  const exec: number[] = [];
  for (let i = 0; i < N_EXEC; i++) exec.push(await time(() => execApi(server, 'warmup', { command: ['true'] })));

  const names = Array.from({ length: N_IDLE }, (_, i) => `idle-${i}`);
  const mem: { total: number; beyondGuestRam: number }[] = [];
  for (const n of names) {
    await server.api(NS, { method: 'POST', json: body(n) });
    const s = (await (await server.api(`${NS}/${n}/wait?timeoutSeconds=120`)).json()) as { metadata: { uid: string } };
    await new Promise((r) => setTimeout(r, 1000));
    mem.push(await hostMemoryMiB(s.metadata.uid));
  }
  const total = summary(mem.map((m) => m.total)).p50;
  row(`${runtime}: cold create → first exec result`, create, baseline);
  row(`${runtime}: exec round trip of true`, exec);
  console.log(
    `  ${runtime}: host memory per idle sandbox ${total.toFixed(1)} MiB (PSS, 256 MiB limit, n=${N_IDLE}) → ${Math.floor(8192 / total)} idle sandboxes in 8 GiB`,
  );
  await Promise.all([...names, 'warmup'].map((n) => server.api(`${NS}/${n}?wait=true`, { method: 'DELETE' })));
  return { create: summary(create), beyondGuestRam: summary(mem.map((m) => m.beyondGuestRam)).p50 };
}

export async function benchRuntimes() {
  console.log('\n== strong isolation: gvisor and microvm ==');
  const server = await startTestServer();
  try {
    const info = (await (await server.api('/apis/moat.dev/v1/info')).json()) as { runtimes: Record<string, { available: boolean; warning?: string }> };
    // The platform the server's gvisor driver chose (systrap, or ptrace where systrap fails).
    const gvisor = new GvisorDriver({ root: server.dataDir, cacheDir: sharedImagesDir() });
    await gvisor.check();
    console.log(`  gvisor platform: ${gvisor.describe()}`);
    const runsc = await rawRunsc(gvisor.platform);
    console.log('  baselines (same run):');
    row(`raw \`runsc --platform=${gvisor.platform} run\` of true`, runsc);
    const g = await benchRuntime(server, 'gvisor', runsc);
    console.log(
      `  gvisor (${gvisor.platform}) cold create → first exec p50 ${g.create.p50.toFixed(1)} ms (target ≤ 250 ms: ${g.create.p50 <= 250 ? 'met' : 'MISSED'})`,
    );
    const stat = await statLoops(server, ['gvisor', 'runc']);
    row(`100,000 stat() in python3, gvisor (${gvisor.platform})`, stat.gvisor!);
    row('100,000 stat() in python3, runc', stat.runc!);
    const ratio = summary(stat.gvisor!).p50 / summary(stat.runc!).p50;
    console.log(
      `  system calls: gvisor (${gvisor.platform}) ×${ratio.toFixed(1)} of runc (stat loop p50; target within ×10: ${ratio <= 10 ? 'met' : 'MISSED'})`,
    );

    if (!info.runtimes.microvm?.available) return console.log('  microvm: not available on this host, skipped');
    // Created once so the server has made its kernel cache and chosen the accelerator.
    const vm = await benchRuntime(server, 'microvm');
    const status = (await (await server.api('/apis/moat.dev/v1/info')).json()) as typeof info;
    const accel = status.runtimes.microvm?.warning ? 'tcg' : 'kvm';
    const boot = await rawQemuBoot(accel);
    row(`raw QEMU boot to marker (${accel}, same kernel)`, boot);
    const target = accel === 'kvm' ? 250 : 1500;
    console.log(`  accelerator: ${accel}${status.runtimes.microvm?.warning ? ` (${status.runtimes.microvm.warning})` : ''}`);
    console.log(
      `  microvm resumed from snapshot → first exec p50 ${vm.create.p50.toFixed(1)} ms, ×${(vm.create.p50 / summary(boot).p50).toFixed(2)} of a raw boot (target ≤ ${target} ms under ${accel}: ${vm.create.p50 <= target ? 'met' : 'MISSED'})`,
    );
    console.log(
      `  microvm host overhead beyond guest RAM ${vm.beyondGuestRam.toFixed(1)} MiB per VM (target ≤ 30 MiB: ${vm.beyondGuestRam <= 30 ? 'met' : 'MISSED'})`,
    );
  } finally {
    await server.close();
  }
}
