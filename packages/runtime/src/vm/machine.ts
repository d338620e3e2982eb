import { join } from 'node:path';
import type { GuestBoot } from './boot.js';
import { CONTROL_MAC, CONTROL_TAP, MAIN_MAC, MAIN_TAP } from './network.js';

export type Accel = 'kvm' | 'tcg';

/** What a snapshot is made for: a VM resumes only from one of the same shape. */
export interface VmShape {
  memoryMiB: number;
  vcpus: number;
}

export interface MachineOptions {
  boot: GuestBoot;
  accel: Accel;
  shape: VmShape;
  /** Guest RAM as a file: shared (written through) when making a snapshot, private copy-on-write when resuming one. */
  ram: { file: string; share: boolean };
  disks: { base: string; disk: string; data: string };
  /** Taps in the sandbox's namespace, or nothing attached (a snapshot's template VM). */
  taps: boolean;
  /** Sockets, pid file and logs. */
  dir: string;
  /** Wait for a migration stream (a snapshot's state) instead of booting. */
  incoming?: boolean;
  /** Appended to the kernel's command line. */
  kernelArgs?: string[];
  /** Drop to this uid:gid in an empty chroot once devices are open, behind QEMU's own seccomp filter. */
  jail?: { uid: number; gid: number; chroot: string };
}

/** RAM that lives in the snapshot's file is not copied into the migration stream, nor read back from it. */
export const IGNORE_SHARED = { capabilities: [{ capability: 'x-ignore-shared', state: true }] };

export const vmFiles = (dir: string) => ({
  qmp: join(dir, 'qmp.sock'),
  /** The control port's FIFOs, `control.in` and `control.out` (see control.ts). */
  control: join(dir, 'control'),
  pid: join(dir, 'qemu.pid'),
  /** The guest's console: /init and the main command write here. */
  log: join(dir, 'log'),
  /** The kernel's own console (boot messages, panics). */
  kernelLog: join(dir, 'kernel.log'),
});

/**
 * The QEMU command line of a Moat microVM: `-M microvm` (virtio-mmio, no
 * PCI, no firmware tables to enumerate) booting Debian's kernel by PVH.
 * Every device exists in every VM, in the same order, so any VM of a shape
 * can resume from that shape's snapshot; only the backends differ.
 */
export function qemuArgs(o: MachineOptions): string[] {
  const f = vmFiles(o.dir);
  const mem = `${o.shape.memoryMiB}M`;
  const drive = (id: string, file: string, ro: boolean) => [
    '-blockdev',
    `driver=file,node-name=${id}f,filename=${file},read-only=${ro ? 'on' : 'off'}${ro ? '' : ',discard=unmap'}`,
    '-blockdev',
    `driver=raw,node-name=${id},file=${id}f,read-only=${ro ? 'on' : 'off'}`,
    '-device',
    `virtio-blk-device,drive=${id},serial=moat-${id}`,
  ];
  const nic = (id: string, tap: string, mac: string, hub: number) => [
    '-netdev',
    o.taps ? `tap,id=${id},ifname=${tap},script=no,downscript=no` : `hubport,id=${id},hubid=${hub}`,
    '-device',
    `virtio-net-device,netdev=${id},mac=${mac}`,
  ];
  return [
    '-name',
    `moat,debug-threads=on`,
    '-accel',
    o.accel === 'kvm' ? 'kvm' : 'tcg,tb-size=64',
    ...(o.accel === 'kvm' ? ['-cpu', 'host,-arch-capabilities'] : []),
    '-M',
    'microvm,memory-backend=ram',
    '-object',
    `memory-backend-file,id=ram,size=${mem},mem-path=${o.ram.file},share=${o.ram.share ? 'on' : 'off'}`,
    '-m',
    mem,
    '-smp',
    String(o.shape.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    o.boot.kernel,
    '-initrd',
    o.boot.initrd,
    // Not quiet: a VM boots only to make a snapshot, and its full boot log is what explains a failed one.
    '-append',
    ['console=ttyS0 panic=-1 no_timer_check', ...(o.kernelArgs ?? [])].join(' '),
    '-chardev',
    `file,id=kcon,path=${f.kernelLog},append=on`,
    '-serial',
    'chardev:kcon',
    ...drive('base', o.disks.base, true),
    ...drive('disk', o.disks.disk, false),
    ...drive('data', o.disks.data, false),
    ...nic('net0', MAIN_TAP, MAIN_MAC, 0),
    ...nic('ctl', CONTROL_TAP, CONTROL_MAC, 1),
    '-object',
    'rng-random,id=rng,filename=/dev/urandom',
    '-device',
    'virtio-rng-device,rng=rng',
    '-device',
    'virtio-serial-device',
    '-chardev',
    `pipe,id=cfg,path=${f.control}`,
    '-device',
    'virtserialport,chardev=cfg,name=moat.config',
    '-chardev',
    `file,id=con,path=${f.log},append=on`,
    '-device',
    'virtconsole,chardev=con',
    '-qmp',
    `unix:${f.qmp},server=on,wait=off`,
    '-pidfile',
    f.pid,
    // Resumed with migrate-incoming once x-ignore-shared is set (see IGNORE_SHARED).
    ...(o.incoming ? ['-incoming', 'defer'] : []),
    ...(o.jail
      ? [
          // elevateprivileges stays allowed: -runas itself needs setuid after the filter is in place (and then has nothing left to elevate from).
          '-sandbox',
          'on,obsolete=deny,spawn=deny,resourcecontrol=deny',
          '-runas',
          `${o.jail.uid}:${o.jail.gid}`,
          '-chroot',
          o.jail.chroot,
        ]
      : []),
  ];
}
