import type { SandboxLimits } from '@moat/core';
import { cgroupPath } from '../cgroups.js';
import { USERNS_HOST_BASE, USERNS_SIZE, type IdRange } from '../userns.js';
import { defaultSeccompProfile } from './seccomp.js';

/**
 * The capabilities a sandbox's root keeps (inside its user namespace): enough
 * for package managers and ordinary admin work (file ownership, switching
 * users, binding low ports), nothing that reaches the kernel or the network
 * below the socket layer (no NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_CHROOT, MKNOD,
 * SETFCAP, AUDIT_WRITE, SYS_PTRACE).
 */
export const SANDBOX_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_NET_BIND_SERVICE',
];

/** In-sandbox paths where the host's pieces are mounted. */
export const IN_SANDBOX = {
  init: '/.moat/init',
  sockDir: '/.moat/sock',
  data: '/data',
};

export interface OciSpecInput {
  id: string;
  hostname: string;
  /** The image's USER: the main command runs as it, and so do execs that name no user. */
  user?: string | undefined;
  /** Main command, run under moat-init; empty: the sandbox idles. */
  command: string[];
  env: string[];
  workingDir: string;
  limits: SandboxLimits;
  initBinary: string;
  sockDir: string;
  dataDir: string;
  dataMountPath?: string;
  netnsPath?: string;
  etcHosts: string;
  etcHostname: string;
  /** Swap may only be capped where the kernel accounts it (cgroup v1 memsw). */
  capSwap: boolean;
  /** The host ids root and the rest map to (default: the canonical range, for a guest kernel of its own). */
  ids?: IdRange;
}

export function ociSpec(i: OciSpecInput) {
  const caps = SANDBOX_CAPABILITIES;
  const tmpfsSize = Math.min(i.limits.memoryBytes, 1024 * 2 ** 20);
  const ids = i.ids ?? { hostId: USERNS_HOST_BASE, size: USERNS_SIZE };
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [IN_SANDBOX.init, ...(i.user ? ['--user', i.user] : []), '--', ...i.command],
      env: i.env,
      cwd: i.workingDir,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
      noNewPrivileges: true,
      // The kernel's OOM killer should pick a sandbox before the control plane.
      oomScoreAdj: 500,
    },
    root: { path: 'rootfs', readonly: false },
    hostname: i.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      // sysfs can only be mounted by the owner of the network namespace; a joined host-owned one gets an empty /sys.
      i.netnsPath
        ? { destination: '/sys', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'noexec', 'nodev', 'mode=755', 'size=4k'] }
        : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${tmpfsSize}`] },
      { destination: i.dataMountPath ?? IN_SANDBOX.data, type: 'bind', source: i.dataDir, options: ['rbind', 'rw', 'nosuid', 'nodev'] },
      { destination: IN_SANDBOX.init, type: 'bind', source: i.initBinary, options: ['bind', 'ro', 'nosuid', 'nodev'] },
      { destination: IN_SANDBOX.sockDir, type: 'bind', source: i.sockDir, options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'] },
      { destination: '/etc/hosts', type: 'bind', source: i.etcHosts, options: ['bind', 'ro'] },
      { destination: '/etc/hostname', type: 'bind', source: i.etcHostname, options: ['bind', 'ro'] },
    ],
    linux: {
      namespaces: [
        { type: 'pid' },
        i.netnsPath ? { type: 'network', path: i.netnsPath } : { type: 'network' },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
        { type: 'cgroup' },
        { type: 'user' },
      ],
      uidMappings: [{ containerID: 0, hostID: ids.hostId, size: ids.size }],
      gidMappings: [{ containerID: 0, hostID: ids.hostId, size: ids.size }],
      cgroupsPath: cgroupPath(i.id),
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: i.limits.memoryBytes, ...(i.capSwap ? { swap: i.limits.memoryBytes } : {}) },
        cpu: { quota: Math.round((i.limits.cpuMillicores * 100000) / 1000), period: 100000 },
        pids: { limit: i.limits.pids },
      },
      seccomp: defaultSeccompProfile(),
      maskedPaths: [
        '/proc/acpi',
        '/proc/asound',
        '/proc/kcore',
        '/proc/keys',
        '/proc/latency_stats',
        '/proc/timer_list',
        '/proc/timer_stats',
        '/proc/sched_debug',
        '/proc/scsi',
        '/sys/firmware',
        '/sys/devices/virtual/powercap',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger', ...(i.netnsPath ? ['/sys'] : [])],
    },
  };
}
