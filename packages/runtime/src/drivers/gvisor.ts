import { access, mkdir, mkdtemp, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run, which } from '../run.js';
import { IN_SANDBOX, type ociSpec } from '../oci/spec.js';
import { OciDriver, writeHostFiles, type OciDriverOptions } from './oci.js';

export type GvisorDriverOptions = OciDriverOptions & {
  /** The runsc binary; `runsc` (Debian package `runsc`) by default. */
  binary?: string;
};

/** How gVisor's sentry intercepts the guest's system calls (runsc `--platform`). */
export type GvisorPlatform = 'systrap' | 'ptrace';

/**
 * The oldest runsc release the driver runs: the one Debian ships past 2022 (bookworm-backports, trixie). Debian 12's
 * own 20221219 has no systrap platform, answers coreutils' statx() with EINVAL and cannot save these sandboxes.
 */
export const MIN_RUNSC_RELEASE = 20240729;

/** How long the platform probe (a sandbox running `true`) may take before systrap counts as not working. */
const PROBE_TIMEOUT_MS = 15_000;

/**
 * The `gvisor` runtime class: the same OCI bundle as runc (overlay rootfs on
 * the sandbox's ext4 disks, moat-init as PID 1 on a unix socket), run by
 * `runsc`. The sandbox's system calls are served by gVisor's user-space
 * kernel (the sentry) instead of the host kernel. See docs/gvisor.md.
 */
export class GvisorDriver extends OciDriver {
  readonly name = 'gvisor' as const;
  // The sentry serves the guest's inotify and namespaces itself: the host kernel's per-namespace limits are not the guest's.
  protected override readonly hostKernel = false;

  private readonly runsc: string;
  private chosen?: { platform: GvisorPlatform; fallback?: string };

  constructor(opts: GvisorDriverOptions) {
    // Every runsc command goes through a small bash wrapper (NETNS_WORKAROUND); it only acts on `run` and `restore`.
    // Its own sandboxes and state folders: each driver's listIds (orphan cleanup) must see only its own.
    super(opts, 'bash', { sandboxes: 'sandboxes-gvisor', state: 'runtime/gvisor' });
    this.runsc = opts.binary ?? 'runsc';
  }

  override async check(): Promise<void> {
    if (!(await which(this.runsc))) {
      throw new Error(`gVisor's ${this.runsc} is not installed: apt-get install runsc (on Debian 12 from bookworm-backports; see docs/gvisor.md)`);
    }
    const v = await run(this.runsc, ['--version'], { allowFail: true });
    const release = runscRelease(v.stdout);
    if (v.code !== 0 || release === undefined) {
      throw new Error(`${this.runsc} --version failed (exit ${v.code}): ${(v.stderr || v.stdout).trim()}`);
    }
    if (release < MIN_RUNSC_RELEASE) {
      throw new Error(
        `gVisor's runsc ${release} is too old: ${MIN_RUNSC_RELEASE} or later is needed (Debian 12: install runsc from bookworm-backports; see docs/gvisor.md)`,
      );
    }
    for (const tool of ['bash', 'nsenter', 'unshare', 'sed']) {
      if (!(await which(tool))) throw new Error(`${tool} is missing: apt-get install bash util-linux sed`);
    }
    await super.check();
    const systrap = await this.probe('systrap');
    if (systrap === undefined) this.chosen = { platform: 'systrap' };
    else {
      const ptrace = await this.probe('ptrace');
      if (ptrace !== undefined) throw new Error(`gVisor cannot run a sandbox here: systrap: ${systrap}; ptrace: ${ptrace}`);
      this.chosen = { platform: 'ptrace', fallback: systrap };
    }
    this.opts.progress?.(`gvisor: runsc ${release}, platform ${this.describe()}`);
  }

  /** The platform check() chose; systrap until then. */
  get platform(): GvisorPlatform {
    return this.chosen?.platform ?? 'systrap';
  }

  /** The platform in use and, on a fallback, why. */
  describe(): string {
    const c = this.chosen;
    if (!c?.fallback) return this.platform;
    return `ptrace (systrap failed here: ${c.fallback}); system calls are several times slower than with systrap`;
  }

  /** A sandbox on ptrace runs worse than it should: every system call costs several host context switches. */
  async degraded(): Promise<string | undefined> {
    return this.chosen?.fallback ? `gVisor runs on its ptrace platform: ${this.describe()}` : undefined;
  }

  /**
   * Runs `true` in a throwaway sandbox (`runsc do`: the host's root read-only, no network) on `platform`:
   * undefined when it works, otherwise why not. Its own state folder, removed after, so no sandbox of ours sees it.
   */
  private async probe(platform: GvisorPlatform): Promise<string | undefined> {
    const root = await mkdtemp(join(tmpdir(), 'moat-runsc-probe-'));
    const args = ['--root', root, `--platform=${platform}`, '--network=none'];
    try {
      const r = await run(this.runsc, [...args, 'do', 'true'], { allowFail: true, timeout: PROBE_TIMEOUT_MS, killSignal: 'SIGKILL' });
      if (r.code === 0) return undefined;
      const why = (r.stderr || r.stdout).trim().split('\n').slice(-2).join(' ');
      return r.code === -1 ? `a sandbox running \`true\` did not finish within ${PROBE_TIMEOUT_MS} ms` : `runsc do true exited ${r.code}: ${why.slice(0, 300)}`;
    } finally {
      const left = await run(this.runsc, [...args, 'list', '--quiet'], { allowFail: true });
      for (const id of left.stdout.split('\n').filter(Boolean)) await run(this.runsc, [...args, 'delete', '--force', id], { allowFail: true });
      await rm(root, { recursive: true, force: true });
    }
  }

  protected override runtimeArgs(): string[] {
    return [
      '-c',
      NETNS_WORKAROUND,
      this.runsc,
      '--root',
      this.stateDir,
      // systrap (seccomp-trapped system calls, no ptrace round trips) where it works; see check().
      // kvm needs /dev/kvm (and hangs where nested virtualisation is missing): never used.
      `--platform=${this.platform}`,
      // The sandbox's network namespace (joined by path) is handed to gVisor's own network stack.
      '--network=sandbox',
      // moat-init creates its agent socket in the bind-mounted /.moat/sock: the gofer must create it on the host.
      '--host-uds=create',
      // Writes go through the gofer to the sandbox's own disk, as with runc, not to sentry memory.
      '--overlay2=none',
      // The bundle's seccomp profile (the runc one) filters the guest's system calls inside the sentry.
      '--oci-seccomp',
      // Lets this bundle's own annotations (written by us, never by the guest) set per-sandbox flags; see adjustSpec.
      '--allow-flag-override',
      // Debugging runsc itself: its logs go to this directory (one file per command).
      ...(process.env.MOAT_RUNSC_DEBUG_LOG ? ['--debug', `--debug-log=${process.env.MOAT_RUNSC_DEBUG_LOG.replace(/\/?$/, '/')}`] : []),
    ];
  }

  protected override async adjustSpec(config: ReturnType<typeof ociSpec>): Promise<void> {
    const annotations: Record<string, string> = {};
    // Without a namespace made by the server runsc would refuse to run in the host's: loopback only, as with runc.
    if (!config.linux.namespaces.some((n) => n.type === 'network' && 'path' in n && n.path)) annotations['dev.gvisor.flag.network'] = 'none';
    Object.assign(config, { annotations });
    Object.assign(config.linux, { seccomp: seccompForGvisor(config.linux.seccomp) });
    // gVisor bind-mounts its own cgroupfs controllers under /sys/fs/cgroup read-write, whatever the mount's
    // options say. They are the sentry's bookkeeping, not the host cgroup that limits the sandbox, but root
    // inside could write them: they are left out, and /sys (a tmpfs here) is read-only, as in runc.
    config.mounts = config.mounts.filter((m) => m.destination !== '/sys/fs/cgroup');
    for (const m of config.mounts) if (m.destination === '/sys' && !m.options.includes('ro')) m.options.push('ro');
  }

  /**
   * gVisor saves the sentry's whole state (its kernel, every process and its memory) itself: no CRIU involved.
   * It cannot save a listener bound on the host, which moat-init's agent socket is (--host-uds=create): moat-init
   * closes it on SIGUSR1 (and opens it again on SIGUSR2, after the restore), so the sandbox is saved without it.
   */
  protected override async checkpoint(id: string, ck: string, paused: boolean): Promise<string | undefined> {
    await mkdir(join(ck, 'images'));
    // A paused sandbox's init cannot close its listener: it runs for the moment of that, then is saved as it is.
    if (paused) await run(this.bin, [...this.runtimeArgs(), 'resume', id], { allowFail: true });
    const parked = await this.parkAgent(id);
    const r = await run(this.bin, [...this.runtimeArgs(), 'checkpoint', '--image-path', join(ck, 'images'), id], { allowFail: true });
    if (r.code === 0) return undefined;
    const out = (r.stderr || r.stdout).trim().split('\n');
    // A failed save panics the sentry: its message, not the goroutine dump after it, says why.
    const why = out.find((l) => /^panic:|error/i.test(l)) ?? out.slice(-2).join(' ');
    if (/bound host socket/.test(why)) {
      return `runsc checkpoint failed: it cannot save a unix socket bound on the host${parked ? ' (an open exec or files connection to the agent, or a socket the workload bound in /.moat/sock)' : ' (the agent socket: this moat-init does not close it on SIGUSR1)'}`;
    }
    return `runsc checkpoint failed: ${why.trim().slice(0, 300)}`;
  }

  /** Asks moat-init to close its agent socket and waits (briefly) until it is gone: whether it went. */
  private async parkAgent(id: string): Promise<boolean> {
    const sock = join(this.dir(id), 'sock', 'agent.sock');
    const k = await run(this.bin, [...this.runtimeArgs(), 'kill', id, 'USR1'], { allowFail: true });
    if (k.code !== 0) return false;
    for (let i = 0; i < 200; i++) {
      if (!(await exists(sock))) return true;
      await sleep(10);
    }
    return false;
  }

  protected override async restore(id: string, ck: string): Promise<string | undefined> {
    const dir = this.dir(id);
    await unlink(join(dir, 'sock', 'agent.sock')).catch(() => {});
    // The argument order is what NETNS_WORKAROUND recognises.
    const r = await this.detached(
      [...this.runtimeArgs(), 'restore', '--detach', '--image-path', join(ck, 'images'), '--bundle', join(dir, 'bundle'), id],
      this.logPath(id),
    );
    if (r.code !== 0) return `runsc restore failed: ${r.tail}`;
    // The restored moat-init was saved without its agent socket (see checkpoint): it opens it again.
    const k = await run(this.bin, [...this.runtimeArgs(), 'kill', id, 'USR2'], { allowFail: true });
    return k.code === 0 ? undefined : `runsc kill USR2 (reopening the agent socket) failed: ${(k.stderr || k.stdout).trim()}`;
  }

  override async setHostname(id: string, hostname: string): Promise<void> {
    await writeHostFiles(this.dir(id), hostname);
    // The sentry has its own UTS namespace, out of the host's reach: set it from inside, with the one
    // capability the sandbox's processes do not have, in a short-lived process of our own.
    const r = await run(this.bin, [...this.runtimeArgs(), 'exec', '--cap', 'CAP_SYS_ADMIN', id, IN_SANDBOX.init, '--set-hostname', hostname], {
      allowFail: true,
    });
    if (r.code !== 0) throw new Error(`setting the hostname failed: runsc exec moat-init --set-hostname exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  }
}

const EPERM = 1;
const ENOSYS = 38;
const PTRACE_SETOPTIONS = 0x4200;
const PTRACE_SEIZE = 0x4206;
const PTRACE_O_TRACESECCOMP = 0x80;

/** An OCI seccomp rule (linux.seccomp.syscalls[]). */
export interface SeccompRule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[];
}

/**
 * runc's seccomp profile as gVisor's sentry can apply it. runsc's OCI seccomp ignores `errnoRet`: every
 * SCMP_ACT_ERRNO fails with EPERM. That is what the profile asks for, except for clone3's ENOSYS, which glibc
 * needs to fall back to clone (whose flags the profile can check): with EPERM no thread could start. So that
 * rule becomes SCMP_ACT_TRACE, which with no tracer fails the call with ENOSYS (seccomp(2); gVisor does the same).
 * A tracer that asked for seccomp stops (PTRACE_O_TRACESECCOMP) could let such a call through, so no process may
 * ask: ptrace's options are a by-value argument, which seccomp can check (strace and gdb never ask for them).
 */
export function seccompForGvisor<P extends { syscalls: SeccompRule[] }>(profile: P): Omit<P, 'syscalls'> & { syscalls: SeccompRule[] } {
  const syscalls = profile.syscalls.map((rule): SeccompRule => {
    if (rule.action !== 'SCMP_ACT_ERRNO' || rule.errnoRet === undefined || rule.errnoRet === EPERM) return rule;
    if (rule.errnoRet !== ENOSYS) throw new Error(`gVisor cannot apply a seccomp rule that returns errno ${rule.errnoRet} (only EPERM and ENOSYS)`);
    const { errnoRet: _, ...rest } = rule;
    return { ...rest, action: 'SCMP_ACT_TRACE' };
  });
  if (syscalls.some((r) => r.action === 'SCMP_ACT_TRACE')) {
    for (const request of [PTRACE_SETOPTIONS, PTRACE_SEIZE]) {
      syscalls.push({
        names: ['ptrace'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [
          { index: 0, value: request, op: 'SCMP_CMP_EQ' },
          { index: 3, value: PTRACE_O_TRACESECCOMP, valueTwo: PTRACE_O_TRACESECCOMP, op: 'SCMP_CMP_MASKED_EQ' },
        ],
      });
    }
  }
  return { ...profile, syscalls };
}

/** The release date in `runsc --version` (`runsc version 0.0~20240729.0` from Debian, `release-20240729.0` upstream). */
export function runscRelease(versionOutput: string): number | undefined {
  const m = /^runsc version \D*(?:0\.0~)?(\d{8})/m.exec(versionOutput);
  return m ? Number(m[1]) : undefined;
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/**
 * `bash -c` script run as `bash -c SCRIPT RUNSC ARGS...`. runsc releases
 * before the fix of google/gvisor#10704 (made after 20240729, the release
 * Debian 12's backports and Debian 13 ship) decide "am I in the host's
 * network namespace?" by whether /proc/sys/net/core/rmem_default exists, and
 * refuse to start with --network=sandbox if so; kernels from about 6.8 show
 * that file in every network namespace. So when the
 * bundle names a network namespace in which the file is visible, `run
 * --detach` is split into `create` (gofer and sentry start normally) and a
 * `start` (which sets up the network) run in a private mount namespace where
 * an empty tmpfs covers the sandbox namespace's /proc/sys/net/core. sysctl
 * dentries are per network namespace, so the cover is mounted from inside the
 * sandbox's namespace; `start` itself then runs back in the caller's, where
 * the sandbox's control socket is. Only that short-lived `runsc start` process
 * sees the cover. A `restore` (which sets the network up as `start` does) runs
 * whole under the cover. Every other command goes straight to runsc.
 */
const NETNS_WORKAROUND = `
args=("$@"); n=\${#args[@]}
if (( n >= 5 )) && [[ \${args[n-5]} == run && \${args[n-4]} == --detach && \${args[n-3]} == --bundle ]]; then
  bundle=\${args[n-2]} id=\${args[n-1]} globals=("\${args[@]:0:n-5}")
  netns=$(sed -n 's/.*"type":"network","path":"\\([^"]*\\)".*/\\1/p' "$bundle/config.json")
  if [[ -n $netns ]] && nsenter --net="$netns" test -e /proc/sys/net/core/rmem_default; then
    "$0" "\${globals[@]}" create --bundle "$bundle" "$id" || exit
    # Not exec: this shell stays in the caller's network namespace, where start must reach the sandbox's control socket.
    nsenter --net="$netns" unshare --mount --propagation private sh -c \\
      'caller=$1; shift; mount -t tmpfs -o size=4k,mode=555 moat-gvisor-10704 /proc/sys/net/core && exec nsenter --net="/proc/$caller/ns/net" "$0" "$@"' \\
      "$0" $$ "\${globals[@]}" start "$id"
    exit
  fi
fi
if (( n >= 7 )) && [[ \${args[n-7]} == restore && \${args[n-6]} == --detach && \${args[n-5]} == --image-path && \${args[n-3]} == --bundle ]]; then
  bundle=\${args[n-2]}
  netns=$(sed -n 's/.*"type":"network","path":"\\([^"]*\\)".*/\\1/p' "$bundle/config.json")
  if [[ -n $netns ]] && nsenter --net="$netns" test -e /proc/sys/net/core/rmem_default; then
    # A restore sets the network up as start does: the whole (short-lived) restore runs under the cover.
    nsenter --net="$netns" unshare --mount --propagation private sh -c \\
      'caller=$1; shift; mount -t tmpfs -o size=4k,mode=555 moat-gvisor-10704 /proc/sys/net/core && exec nsenter --net="/proc/$caller/ns/net" "$0" "$@"' \\
      "$0" $$ "\${args[@]}"
    exit
  fi
fi
exec "$0" "$@"
`;
