import { spawn } from 'node:child_process';
import { access, constants, readFile, writeFile } from 'node:fs/promises';
import type { GuestBoot } from './boot.js';
import type { Accel } from './machine.js';

export interface AccelChoice {
  accel: Accel;
  /** Why not KVM, when it is TCG: shown in the sandbox's status, the server's info and logs. */
  warning?: string;
}

/**
 * KVM when it really works, else TCG (software emulation, ~10-50x slower).
 * /dev/kvm opening is not enough: in some nested VMs KVM_CREATE_VM succeeds
 * yet every guest hangs at boot. So a tiny boot of the real guest kernel
 * (to a marker printed before anything else) must finish within the timeout.
 * MOAT_MICROVM_ACCEL=kvm|tcg skips the probe.
 */
export async function chooseAccel(boot: GuestBoot, cacheFile: string, timeoutMs = 8000): Promise<AccelChoice> {
  const forced = process.env.MOAT_MICROVM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg')
    return { accel: forced, ...(forced === 'tcg' ? { warning: 'MOAT_MICROVM_ACCEL=tcg: microVMs run under software emulation (TCG)' } : {}) };
  if (forced) throw new Error(`MOAT_MICROVM_ACCEL must be kvm or tcg, not "${forced}"`);
  if (
    !(await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
      () => true,
      () => false,
    ))
  ) {
    return { accel: 'tcg', warning: 'no usable /dev/kvm: microVMs run under software emulation (TCG), boots and execs are much slower' };
  }
  // Probed once per host boot (and guest kernel): a hanging KVM would otherwise cost the timeout at every server start.
  const key = `${(await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()} ${boot.key}`;
  const cached = JSON.parse(await readFile(cacheFile, 'utf8').catch(() => '{}')) as { key?: string; choice?: AccelChoice };
  if (cached.key === key && cached.choice) return cached.choice;
  const ok = await probeKvm(boot, timeoutMs);
  const choice: AccelChoice =
    ok === true
      ? { accel: 'kvm' }
      : { accel: 'tcg', warning: `KVM does not work on this host (${ok}): microVMs run under software emulation (TCG), boots and execs are much slower` };
  await writeFile(cacheFile, JSON.stringify({ key, choice }));
  return choice;
}

function probeKvm(boot: GuestBoot, timeoutMs: number): Promise<true | string> {
  return new Promise((resolve) => {
    // coreutils' timeout bounds the test guest's life even when this server dies first (a crash, a quick close):
    // a guest that hangs in KVM would otherwise spin a core for good. It leads its own process group, so the
    // kills below take the guest with it.
    const child = spawn(
      'timeout',
      [
        '--signal=KILL',
        `${Math.ceil(timeoutMs / 1000) + 2}s`,
        'qemu-system-x86_64',
        '-accel',
        'kvm',
        '-cpu',
        'host,-arch-capabilities',
        '-M',
        'microvm',
        '-m',
        '128M',
        '-smp',
        '1',
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
        'console=ttyS0 quiet panic=-1 moat.probe',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    const kill = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {} // gone already
    };
    let out = '';
    const timer = setTimeout(() => {
      kill();
      resolve(`a test guest did not boot within ${timeoutMs} ms`);
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('moat-guest: probe ok')) kill();
    });
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve(out.includes('moat-guest: probe ok') ? true : `test boot exited ${code}: ${out.trim().split('\n').slice(-2).join(' ')}`);
    });
  });
}
