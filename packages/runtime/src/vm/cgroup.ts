import { mkdir, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cgroupPath } from '../cgroups.js';

const ROOT = '/sys/fs/cgroup';

export interface VmCgroupLimits {
  memoryBytes: number;
  cpuMillicores: number;
  pids: number;
}

/**
 * The cgroup a microVM's QEMU runs in: the same path as a container's (so
 * usage is read the same way), on cgroup v2 or on v1's per-controller
 * hierarchies. Returns the cgroup.procs files the process must join.
 */
export async function makeVmCgroup(id: string, l: VmCgroupLimits): Promise<string[]> {
  const rel = cgroupPath(id);
  const quota = Math.round((l.cpuMillicores * 100000) / 1000);
  if (await isV2()) {
    const dir = join(ROOT, rel);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'memory.max'), String(l.memoryBytes));
    await writeFile(join(dir, 'memory.swap.max'), '0').catch(() => {});
    await writeFile(join(dir, 'cpu.max'), `${quota} 100000`);
    await writeFile(join(dir, 'pids.max'), String(l.pids));
    return [join(dir, 'cgroup.procs')];
  }
  const procs: string[] = [];
  const settings: Record<string, [string, string][]> = {
    memory: [['memory.limit_in_bytes', String(l.memoryBytes)]],
    cpu: [
      ['cpu.cfs_period_us', '100000'],
      ['cpu.cfs_quota_us', String(quota)],
    ],
    cpuacct: [],
    pids: [['pids.max', String(l.pids)]],
  };
  for (const [controller, files] of Object.entries(settings)) {
    const dir = join(ROOT, controller, rel);
    await mkdir(dir, { recursive: true });
    for (const [f, v] of files) await writeFile(join(dir, f), v);
    procs.push(join(dir, 'cgroup.procs'));
  }
  return procs;
}

/** Removes the cgroup; a killed QEMU holds it (EBUSY) until it is reaped, so this waits a little. Idempotent. */
export async function removeVmCgroup(id: string): Promise<void> {
  const rel = cgroupPath(id);
  for (const dir of [join(ROOT, rel), ...['memory', 'cpu', 'cpuacct', 'pids'].map((c) => join(ROOT, c, rel))]) {
    for (let i = 0; ; i++) {
      const err = await rmdir(dir).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      );
      if (!err || err.code === 'ENOENT') break;
      if (err.code !== 'EBUSY' || i >= 200) throw new Error(`cannot remove cgroup ${dir}: ${err.message}`);
      await sleep(10);
    }
  }
}

const isV2 = () =>
  stat(join(ROOT, 'cgroup.controllers')).then(
    () => true,
    () => false,
  );
