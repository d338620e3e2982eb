import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { run, which } from '../run.js';
import type { ociSpec } from '../oci/spec.js';
import { OciDriver, writeHostFiles, type OciDriverOptions } from './oci.js';

export type GvisorDriverOptions = OciDriverOptions & {
  /** The runsc binary; `runsc` (Debian package `runsc`) by default. */
  binary?: string;
};

/**
 * The `gvisor` runtime class: the same OCI bundle as runc (overlay rootfs on
 * the sandbox's ext4 disks, moat-init as PID 1 on a unix socket), run by
 * `runsc`. The sandbox's system calls are served by gVisor's user-space
 * kernel (the sentry) instead of the host kernel. See docs/gvisor.md.
 */
export class GvisorDriver extends OciDriver {
  readonly name = 'gvisor' as const;

  private readonly runsc: string;

  constructor(opts: GvisorDriverOptions) {
    // Every runsc command goes through a small bash wrapper (NETNS_WORKAROUND); it only acts on `run`.
    // Its own sandboxes and state folders: each driver's listIds (orphan cleanup) must see only its own.
    super(opts, 'bash', { sandboxes: 'sandboxes-gvisor', state: 'runtime/gvisor' });
    this.runsc = opts.binary ?? 'runsc';
  }

  override async check(): Promise<void> {
    if (!(await which(this.runsc))) {
      throw new Error(`gVisor's ${this.runsc} is not installed: apt-get install runsc (Debian/Ubuntu package "runsc")`);
    }
    const v = await run(this.runsc, ['--version'], { allowFail: true });
    if (v.code !== 0 || !/runsc version/.test(v.stdout)) {
      throw new Error(`${this.runsc} --version failed (exit ${v.code}): ${(v.stderr || v.stdout).trim()}`);
    }
    for (const tool of ['bash', 'nsenter', 'unshare', 'sed']) {
      if (!(await which(tool))) throw new Error(`${tool} is missing: apt-get install bash util-linux sed`);
    }
    await super.check();
  }

  protected override runtimeArgs(): string[] {
    return [
      '-c',
      NETNS_WORKAROUND,
      this.runsc,
      '--root',
      this.stateDir,
      // ptrace works everywhere; kvm needs /dev/kvm (and hangs where nested virtualisation is missing).
      '--platform=ptrace',
      // The sandbox's network namespace (joined by path) is handed to gVisor's own network stack.
      '--network=sandbox',
      // moat-init creates its agent socket in the bind-mounted /.moat/sock: the gofer must create it on the host.
      '--host-uds=create',
      // Writes go through the gofer to the sandbox's own disk, as with runc, not to sentry memory.
      '--overlay2=none',
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
    // The guest's system calls never reach the host kernel: the sentry implements them (and refuses mount,
    // unshare of namespaces it does not own, module loading... by its own capability checks), and runsc
    // confines the sentry and gofer with its own host seccomp filters. The OCI profile would only be
    // emulated inside the sentry, and this runsc release ignores errnoRet there (every denial becomes
    // EPERM), which would turn the profile's ENOSYS for clone3 into a failure glibc does not fall back from.
    delete (config.linux as { seccomp?: unknown }).seccomp;
  }

  /** gVisor saves the sentry's whole state (its kernel, every process and its memory) itself: no CRIU involved. */
  protected override async checkpoint(id: string, ck: string): Promise<string | undefined> {
    await mkdir(join(ck, 'images'));
    const r = await run(this.bin, [...this.runtimeArgs(), 'checkpoint', '--image-path', join(ck, 'images'), id], { allowFail: true });
    if (r.code === 0) return undefined;
    const out = (r.stderr || r.stdout).trim().split('\n');
    // A failed save panics the sentry: its message, not the goroutine dump after it, says why.
    const why = out.find((l) => /^panic:|error/i.test(l)) ?? out.slice(-2).join(' ');
    const hostUds = /encoding error at object transport\.connectionedEndpoint/.test(why) ? /path:"([^"]*)"/.exec(why)?.[1] : undefined;
    if (hostUds) {
      return `runsc checkpoint failed: it cannot save the unix socket bound on the host at ${hostUds} (--host-uds=create; moat-init serves exec and files on it)`;
    }
    return `runsc checkpoint failed: ${why.trim().slice(0, 300)}`;
  }

  protected override async restore(id: string, ck: string): Promise<string | undefined> {
    const dir = this.dir(id);
    await unlink(join(dir, 'sock', 'agent.sock')).catch(() => {});
    // The argument order is what NETNS_WORKAROUND recognises.
    const r = await this.detached(
      [...this.runtimeArgs(), 'restore', '--detach', '--image-path', join(ck, 'images'), '--bundle', join(dir, 'bundle'), id],
      this.logPath(id),
    );
    return r.code === 0 ? undefined : `runsc restore failed: ${r.tail}`;
  }

  override async setHostname(id: string, hostname: string): Promise<void> {
    await writeHostFiles(this.dir(id), hostname);
    // The sentry has its own UTS namespace, out of the host's reach: set it from inside, with the one
    // capability the sandbox's processes do not have, in a short-lived process of our own.
    const r = await run(this.bin, [...this.runtimeArgs(), 'exec', '--cap', 'CAP_SYS_ADMIN', id, 'hostname', hostname], { allowFail: true });
    if (r.code !== 0) throw new Error(`setting the hostname failed: runsc exec hostname exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  }
}

/**
 * `bash -c` script run as `bash -c SCRIPT RUNSC ARGS...`. runsc releases
 * before mid-2024 (Debian bookworm ships 20221219) decide "am I in the host's
 * network namespace?" by whether /proc/sys/net/core/rmem_default exists, and
 * refuse to start with --network=sandbox if so; kernels from about 6.8 show
 * that file in every network namespace (google/gvisor#10704). So when the
 * bundle names a network namespace in which the file is visible, `run
 * --detach` is split into `create` (gofer and sentry start normally) and a
 * `start` (which sets up the network) run in a private mount namespace where
 * an empty tmpfs covers the sandbox namespace's /proc/sys/net/core. sysctl
 * dentries are per network namespace, so the cover is mounted from inside the
 * sandbox's namespace; `start` itself then runs back in the caller's, where
 * the sandbox's control socket is. Only that short-lived `runsc start` process
 * sees the cover. Every other command goes straight to runsc.
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
