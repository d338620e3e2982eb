import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

const ROOT = '/sys/fs/cgroup';

/** The cgroup path given to the OCI runtime; the same on v1 (per controller) and v2. */
export const cgroupPath = (id: string) => `/moat/${id}`;

export interface Usage {
  memoryBytes: number;
  cpuSeconds: number;
  pids: number;
}

const readNum = (p: string) =>
  readFile(p, 'utf8').then(
    (s) => Number(s.trim()),
    () => NaN,
  );

/** Read a sandbox's usage from whichever cgroup hierarchy holds it (v1 controllers or unified v2). */
export async function readUsage(id: string): Promise<Usage> {
  const rel = cgroupPath(id);
  const v2 = join(ROOT, rel);
  const v2mem = await readNum(join(v2, 'memory.current'));
  if (!Number.isNaN(v2mem)) {
    const cpuStat = await readFile(join(v2, 'cpu.stat'), 'utf8').catch(() => '');
    const usec = Number(/usage_usec (\d+)/.exec(cpuStat)?.[1] ?? 0);
    return { memoryBytes: v2mem, cpuSeconds: usec / 1e6, pids: (await readNum(join(v2, 'pids.current'))) || 0 };
  }
  const mem = await readNum(join(ROOT, 'memory', rel, 'memory.usage_in_bytes'));
  const cpu = await readNum(join(ROOT, 'cpuacct', rel, 'cpuacct.usage'));
  const pids = await readNum(join(ROOT, 'pids', rel, 'pids.current'));
  return { memoryBytes: mem || 0, cpuSeconds: (cpu || 0) / 1e9, pids: pids || 0 };
}

/** Whether the v1 memory controller accounts swap (memsw): only then may we cap swap. */
export async function memswAvailable(): Promise<boolean> {
  return readFile(join(ROOT, 'memory', 'memory.memsw.limit_in_bytes'), 'utf8').then(
    () => true,
    () => false,
  );
}
