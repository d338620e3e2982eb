/**
 * Default seccomp profile. The sandbox already has its own pid, mount, user
 * and network namespaces and a tiny capability set; this filter removes the
 * kernel surface an agent never needs and that container escapes have used:
 * mounting, namespaces, kernel modules and kexec, keyrings, eBPF,
 * userfaultfd, perf, io_uring, handle-based opens, clock and swap changes.
 * Denied calls fail with EPERM rather than killing the process, so tools
 * print a normal "Operation not permitted".
 */
const DENIED = [
  // filesystems and namespaces
  'mount',
  'umount',
  'umount2',
  'pivot_root',
  'chroot',
  'unshare',
  'setns',
  'fsopen',
  'fsconfig',
  'fsmount',
  'fspick',
  'move_mount',
  'open_tree',
  'mount_setattr',
  'open_by_handle_at',
  'name_to_handle_at',
  // kernel and host state
  'init_module',
  'finit_module',
  'delete_module',
  'create_module',
  'get_kernel_syms',
  'query_module',
  'kexec_load',
  'kexec_file_load',
  'reboot',
  'swapon',
  'swapoff',
  'syslog',
  'acct',
  'settimeofday',
  'clock_settime',
  'clock_settime64',
  'clock_adjtime',
  'clock_adjtime64',
  'adjtimex',
  'stime',
  'quotactl',
  'quotactl_fd',
  'lookup_dcookie',
  'nfsservctl',
  'uselib',
  'vhangup',
  'iopl',
  'ioperm',
  'vm86',
  'vm86old',
  // large attack surfaces an agent does not need
  'keyctl',
  'add_key',
  'request_key',
  'bpf',
  'userfaultfd',
  'perf_event_open',
  'io_uring_setup',
  'io_uring_enter',
  'io_uring_register',
  'kcmp',
  'pidfd_getfd',
  'fanotify_init',
  'lsm_set_self_attr',
];

// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME: clone must not create namespaces.
const CLONE_NS_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080];

export function defaultSeccompProfile() {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: process.arch === 'arm64' ? ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'] : ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls: [
      { names: DENIED, action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
      // clone3 passes flags in memory, which seccomp cannot inspect: ENOSYS makes libc fall back to clone.
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
      // One rule per flag: seccomp can test "all bits of a mask set", and rules for one call are or-ed.
      ...CLONE_NS_FLAGS.map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: 1,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      })),
    ],
  };
}
