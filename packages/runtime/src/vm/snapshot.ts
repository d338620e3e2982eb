import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GuestBoot } from './boot.js';
import { controlPipes, makeControlPipes } from './control.js';
import { IGNORE_SHARED, qemuArgs, vmFiles, type Accel, type VmShape } from './machine.js';
import { Qmp } from './qmp.js';

export interface Snapshot {
  /** Guest RAM at the moment of the snapshot; VMs map it private, so it is shared and never written. */
  ram: string;
  /** Device and CPU state (a QEMU migration stream without the RAM). */
  state: string;
}

/** Printed by packages/guest/init once it waits for its config: the moment a snapshot is taken. */
export const WAITING_MARKER = 'moat-guest: waiting for config';

const making = new Map<string, Promise<Snapshot>>();

/**
 * A booted, idle guest of this shape, paused at the point where it waits for
 * its config (before it touches any disk). Made once per kernel+initramfs,
 * accelerator and shape, then every VM of that shape resumes from it instead
 * of booting. The boot to that point is the slow part under TCG (seconds).
 */
export function ensureSnapshot(cacheDir: string, boot: GuestBoot, accel: Accel, shape: VmShape, progress?: (l: string) => void): Promise<Snapshot> {
  const dir = join(cacheDir, 'snapshots', `${boot.key}-${accel}-${shape.memoryMiB}m-${shape.vcpus}c`);
  let p = making.get(dir);
  if (!p) {
    p = make(dir, boot, accel, shape, progress).finally(() => making.delete(dir));
    making.set(dir, p);
  }
  return p;
}

async function make(dir: string, boot: GuestBoot, accel: Accel, shape: VmShape, progress?: (l: string) => void): Promise<Snapshot> {
  const snap = { ram: join(dir, 'ram'), state: join(dir, 'state') };
  if (
    await stat(snap.state).then(
      () => true,
      () => false,
    )
  )
    return snap;
  await mkdir(join(dir, '..'), { recursive: true });
  progress?.(`booting a ${shape.memoryMiB} MiB, ${shape.vcpus}-vCPU microVM (${accel}) to snapshot it; later VMs of this shape resume from it`);
  const tmp = await mkdtemp(`${dir}.tmp-`);
  const f = vmFiles(tmp);
  try {
    // Stand-ins for the per-VM disks: the guest only learns their sizes here, and mounts the real ones after resume.
    const disks = { base: join(tmp, 'base'), disk: join(tmp, 'disk'), data: join(tmp, 'data') };
    for (const d of Object.values(disks)) {
      await writeFile(d, '');
      await truncate(d, 2 ** 40);
    }
    await makeControlPipes(f.control);
    const tscKhz = accel === 'tcg' ? await hostTscKhz() : undefined;
    const kernelArgs = tscKhz ? [`tsc_early_khz=${tscKhz}`] : [];
    const args = qemuArgs({ boot, accel, shape, ram: { file: join(tmp, 'ram'), share: true }, disks, taps: false, dir: tmp, kernelArgs });
    let booted: { child: ChildProcess; exited: Promise<string> } | undefined;
    for (let attempt = 1; !booted; attempt++) {
      const r = await bootToMarker(args, tmp);
      if (typeof r !== 'string') booted = r;
      else if (attempt >= BOOT_ATTEMPTS || !r.startsWith(RETRYABLE)) {
        // The logs are kept (one set per shape) for a look; the disks and RAM are not.
        for (const file of [...Object.values(disks), join(tmp, 'ram')]) await rm(file, { force: true });
        await rm(`${dir}.failed`, { recursive: true, force: true });
        await rename(tmp, `${dir}.failed`).catch(() => {});
        throw new Error(`making the microVM snapshot failed: ${r} (logs in ${dir}.failed)`);
      } else progress?.(`${r.split(':')[0]}; booting again (attempt ${attempt + 1} of ${BOOT_ATTEMPTS})`);
    }
    const { child, exited } = booted;
    try {
      const qmp = await Qmp.connect(f.qmp);
      await qmp.execute('stop');
      await qmp.execute('migrate-set-capabilities', IGNORE_SHARED);
      // exec: is the one file target this QEMU offers; this VM never ran anything but our /init.
      // cat may still be writing when QEMU reports completion: the rename marks the end.
      await qmp.execute('migrate', { uri: `exec:cat > '${join(tmp, 'state.part')}' && mv '${join(tmp, 'state.part')}' '${join(tmp, 'state')}'` });
      for (;;) {
        const s = await qmp.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
        if (s.status === 'completed') break;
        if (s.status === 'failed' || s.status === 'cancelled') throw new Error(`snapshot migration ${s.status}: ${s['error-desc'] ?? ''}`);
        await sleep(20);
      }
      while (
        !(await stat(join(tmp, 'state')).then(
          () => true,
          () => false,
        ))
      )
        await sleep(20);
      await qmp.execute('quit').catch(() => {});
      qmp.close();
      await exited;
    } finally {
      child.kill('SIGKILL');
    }
    for (const d of [...Object.values(disks), ...Object.values(controlPipes(f.control))]) await rm(d);
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      await rm(tmp, { recursive: true, force: true });
    });
    return snap;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Under TCG the guest reads the host's TSC. When the host knows its TSC's
 * frequency (constant, and given by the CPU or hypervisor, not measured),
 * the guest is told it too, so it skips calibrating against the emulated PIT,
 * which fails whenever the host is busy.
 */
export async function hostTscKhz(): Promise<number | undefined> {
  const cpu = (await readFile('/proc/cpuinfo', 'utf8').catch(() => '')).split('\n\n')[0] ?? '';
  const flags = new Set(/^flags\s*:(.*)$/m.exec(cpu)?.[1]?.trim().split(/\s+/));
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpu)?.[1]);
  if (!flags.has('constant_tsc') || !flags.has('tsc_known_freq') || !(mhz > 0)) return undefined;
  return Math.round(mhz * 1000);
}

const BOOT_ATTEMPTS = 3;
const RETRYABLE = 'the guest kernel could not calibrate its clock';

/**
 * Boots the template VM until /init waits for its config. Under emulation on
 * a busy host the kernel's TSC calibration against the PIT can fail, and the
 * kernel then hangs for good: that is recognised in its log and retried.
 * Resolves to the running QEMU, or to why it did not get there.
 */
async function bootToMarker(args: string[], dir: string): Promise<{ child: ChildProcess; exited: Promise<string> } | string> {
  const f = vmFiles(dir);
  for (const l of [f.log, f.kernelLog]) await rm(l, { force: true });
  const logFd = openSync(join(dir, 'qemu.log'), 'a');
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(`QEMU exited (${code ?? signal})`)));
  const deadline = Date.now() + 300_000;
  for (;;) {
    const [log, kernel] = await Promise.all([f.log, f.kernelLog].map((l) => readFile(l, 'utf8').catch(() => '')));
    // The marker is on the virtio console, or on the kernel's if that console never appeared.
    if (log!.includes(WAITING_MARKER) || kernel!.includes(WAITING_MARKER)) return { child, exited };
    const early = await Promise.race([exited, sleep(50, 'running')]);
    let why = early !== 'running' ? early : Date.now() > deadline ? 'the guest did not reach its config prompt within 300 s' : '';
    if (kernel!.includes('could not calculate TSC khz')) why = `${RETRYABLE} (host too busy during its boot)`;
    if (why) {
      child.kill('SIGKILL');
      await exited;
      const tail = [await readFile(join(dir, 'qemu.log'), 'utf8').catch(() => ''), kernel, log].join('\n').trim().split('\n').slice(-6).join('\n');
      return `${why}: ${tail}`;
    }
  }
}
