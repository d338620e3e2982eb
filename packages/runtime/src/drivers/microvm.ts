import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createWriteStream, openSync } from 'node:fs';
import { access, chmod, mkdir, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AgentClient } from '../agent/index.js';
import { readUsage } from '../cgroups.js';
import { createExt4 } from '../disk.js';
import { IN_SANDBOX, ociSpec } from '../oci/spec.js';
import { hostUid } from '../userns.js';
import { defaultInitBinary, ensureDir } from '../paths.js';
import { which } from '../run.js';
import { chooseAccel, type AccelChoice } from '../vm/accel.js';
import { ensureBaseDisk } from '../vm/base-disk.js';
import { ensureGuestBoot, type GuestBoot } from '../vm/boot.js';
import { controlRequest, makeControlPipes, writeControl } from '../vm/control.js';
import { makeVmCgroup, removeVmCgroup } from '../vm/cgroup.js';
import { IGNORE_SHARED, qemuArgs, vmFiles, type VmShape } from '../vm/machine.js';
import { Qmp } from '../vm/qmp.js';
import { GUEST_AGENT, plugVmNetwork } from '../vm/network.js';
import { ensureSnapshot } from '../vm/snapshot.js';
import { checkpointDir, clearCheckpoint, completeCheckpoint, readCheckpoint, savedBefore, startCheckpoint } from '../checkpoint/index.js';
import {
  QuiesceError,
  type CreateOptions,
  type DiskKind,
  type DriverContext,
  type HibernateResult,
  type QuiesceContext,
  type RuntimeDriver,
  type RuntimeState,
  type SandboxRuntimeSpec,
  type WakeResult,
} from './types.js';

export interface MicrovmDriverOptions extends DriverContext {
  /** packages/guest/init by default. */
  guestInit?: string;
  readyTimeoutMs?: number;
}

const MiB = 2 ** 20;
/** QEMU itself beyond guest RAM: TCG's translation cache (64 MiB, see machine.ts), device emulation, I/O buffers. */
const QEMU_OVERHEAD_BYTES = 160 * MiB;
/** QEMU's threads (vCPUs, I/O workers): the guest's own processes are the guest kernel's business. */
const QEMU_PIDS = 256;

/**
 * The `microvm` runtime class: one QEMU microVM per sandbox with its own
 * (Debian) kernel. Disks: the image as a shared read-only ext4, the
 * sandbox's writable layer and `/data` as ext4 files of their own (the same
 * layout as the runc driver's). New VMs resume from a per-shape snapshot and
 * then receive their identity, disks and network. Inside the guest, crun
 * runs moat-init and the workload confined as the runc driver does on a
 * host (the same OCI spec); moat-init is reached over a private link
 * through a relay in the sandbox's network namespace. See docs/microvm.md.
 */
export class MicrovmDriver implements RuntimeDriver {
  readonly name = 'microvm' as const;
  private prepared?: Promise<{ boot: GuestBoot; accel: AccelChoice }>;
  private readonly sandboxesDir: string;
  /** Kernels, initramfs, image disks and snapshots: shared by every sandbox (and server) on the host. */
  private readonly cacheDir: string;
  private readonly initBinary: string;
  private readonly progress: (line: string) => void;

  constructor(private readonly opts: MicrovmDriverOptions) {
    this.sandboxesDir = join(opts.root, 'sandboxes-microvm');
    this.cacheDir = join(opts.cacheDir, 'microvm');
    this.initBinary = opts.initBinary ?? defaultInitBinary();
    this.progress = (line) => opts.progress?.(`microvm: ${line}`);
  }

  async check(): Promise<void> {
    const tools: [string, string][] = [
      ['qemu-system-x86_64', 'qemu-system-x86'],
      ['socat', 'socat'],
      ['cpio', 'cpio'],
      ['nsenter', 'util-linux'],
      ['crun', 'crun'],
      ['mkfifo', 'coreutils'],
      ['ldd', 'libc-bin'],
      ['tc', 'iproute2'],
      ['mkfs.ext4', 'e2fsprogs'],
      ['depmod', 'kmod'],
      ['dpkg-deb', 'dpkg'],
      ['apt-get', 'apt'],
    ];
    for (const [tool, pkg] of tools) if (!(await which(tool))) throw new Error(`${tool} is missing: apt-get install ${pkg}`);
    const busybox = await readFile('/bin/busybox').catch(() => undefined);
    // The initramfs has no libraries: only busybox-static's binary works there.
    if (!busybox || !isStaticElf(busybox)) throw new Error('a static /bin/busybox is missing: apt-get install busybox-static');
    await access(this.initBinary).catch(() => {
      throw new Error(`${this.initBinary} is not built: run \`make -C packages/agent\``);
    });
    // Only root enters: QEMU runs chrooted in each sandbox's jail, as a uid of its own.
    await ensureDir(this.sandboxesDir, 0o700);
  }

  /** Kernel, initramfs and accelerator: found or made once (the first time, a kernel download and a test boot). */
  prepare(): Promise<{ boot: GuestBoot; accel: AccelChoice }> {
    this.prepared ??= (async () => {
      const boot = await ensureGuestBoot({ cacheDir: this.cacheDir, initBinary: this.initBinary, guestInit: this.guestInit(), progress: this.progress });
      const accel = await chooseAccel(boot, join(this.cacheDir, 'accel.json'));
      if (accel.warning) this.progress(`warning: ${accel.warning}`);
      return { boot, accel };
    })().catch((err) => {
      this.prepared = undefined;
      throw err;
    });
    return this.prepared;
  }

  dir(id: string) {
    return join(this.sandboxesDir, id);
  }

  logPath(id: string) {
    return vmFiles(this.dir(id)).log;
  }

  agent(id: string) {
    return new AgentClient(join(this.dir(id), 'sock', 'agent.sock'));
  }

  /** The guest's `vdb`: the host never mounts it. */
  writableLayer(id: string) {
    return { image: join(this.dir(id), 'disk.img') };
  }

  /**
   * The host cannot see the guest's page cache, so a microVM must run to be held still. Its volume is synced
   * and frozen inside the guest. Its root is the overlay on the writable layer, and freezing that in the guest
   * would freeze the agent that must thaw it: the guest syncs, then QEMU stops the vCPUs (QMP stop, which also
   * drains and flushes QEMU's own block I/O) while the host reads the image, and continues them after.
   */
  async quiesce<T>(id: string, what: DiskKind, copy: () => Promise<T>, ctx: QuiesceContext): Promise<T> {
    const flushed = "(a microVM's guest cache must be flushed)";
    if (!ctx.running)
      throw new QuiesceError(what === 'data' ? `resume it to back it up ${flushed}` : `resume or wake it to back up its writable layer ${flushed}`, true);
    // The guest's PID 1 does it: the sandbox's root may not freeze a filesystem.
    if (what === 'data') {
      await this.mustInGuest(id, 'freeze', 'freeze the volume');
      try {
        return await copy();
      } finally {
        await this.mustInGuest(id, 'thaw', 'thaw the volume').catch((err: unknown) => ctx.warn(err, 'could not thaw a microVM volume'));
      }
    }
    await this.mustInGuest(id, 'sync', 'sync the writable layer');
    await this.pause(id);
    try {
      return await copy();
    } finally {
      await this.resume(id).catch((err: unknown) => ctx.warn(err, 'could not continue a microVM stopped for a backup'));
    }
  }

  /**
   * Thaws a volume frozen inside a running guest. A microVM stopped for a copy of its writable layer needs
   * nothing here: the controller's recovery continues it (its record says Running).
   */
  async thaw(id: string, what: DiskKind, ctx: QuiesceContext): Promise<void> {
    if (what !== 'data' || !ctx.running) return;
    // MicroVMs outlive the control plane: thaw inside (an error when it was not frozen is expected), bounded.
    await this.control(id, 'thaw', [], 5000).catch(() => {});
  }

  /** A request to the guest's PID 1, outside the confined sandbox (packages/guest/init). */
  private control(id: string, verb: string, args: string[] = [], timeoutMs?: number): Promise<void> {
    return controlRequest(vmFiles(this.dir(id)).control, verb, args, timeoutMs);
  }

  private async mustInGuest(id: string, verb: 'freeze' | 'thaw' | 'sync', what: string): Promise<void> {
    await this.control(id, verb).catch((err: Error) => {
      throw new QuiesceError(`could not ${what} inside the microVM: ${err.message}`);
    });
  }

  async create(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<void> {
    // A fresh start: a hibernate's saved machine no longer matches the disks once this runs.
    await clearCheckpoint(this.dir(spec.id));
    await this.launch(spec, opts);
  }

  /**
   * Starts QEMU on the sandbox's disks and network and loads a migration
   * stream: the shape's snapshot (a new VM, which then receives its config), or
   * this VM's own hibernated state (RAM included: it is already configured).
   */
  private async launch(spec: SandboxRuntimeSpec, opts: CreateOptions, hibernated?: string): Promise<void> {
    const dir = this.dir(spec.id);
    const p = (...s: string[]) => join(dir, ...s);
    if (!spec.netnsPath) throw new Error('the microvm runtime needs the sandbox network (a network namespace) for its agent link');
    await this.stopProcesses(spec.id);
    for (const d of ['sock', 'jail']) await mkdir(p(d), { recursive: true, mode: 0o700 });
    await writeFile(p('spec.json'), JSON.stringify(spec));
    // Kept across restarts of the sandbox, like the runc driver's. The guest gives the overlay's upper dir and the
    // volume's root to the sandbox's root (hostUid(0) in the guest as on a host), as that driver does.
    if (!(await exists(p('disk.img')))) await createExt4(p('disk.img'), spec.limits.diskBytes, { journal: false, rootOwner: 0 });
    const data = spec.dataImage ?? p('data.img'); // a named volume's image lives outside the sandbox's dir
    if (!(await exists(data))) await createExt4(data, spec.limits.dataBytes, { journal: true, rootOwner: hostUid(0) });

    const { boot, accel } = await this.prepare();
    const shape = vmShape(spec);
    const [base, snap] = await Promise.all([
      ensureBaseDisk(this.cacheDir, spec.image, this.progress),
      ensureSnapshot(this.cacheDir, boot, accel.accel, shape, this.progress),
    ]);
    await opts.ready;
    const guest = await plugVmNetwork(spec.netnsPath);
    const procs = await makeVmCgroup(spec.id, {
      memoryBytes: shape.memoryMiB * MiB + QEMU_OVERHEAD_BYTES,
      cpuMillicores: spec.limits.cpuMillicores,
      pids: QEMU_PIDS,
    });

    await this.startRelay(spec.id, spec.netnsPath);
    const f = vmFiles(dir);
    const jailId = vmUid(spec.id);
    const args = qemuArgs({
      boot,
      accel: accel.accel,
      shape,
      ram: { file: snap.ram, share: false },
      disks: { base, disk: p('disk.img'), data },
      taps: true,
      dir,
      incoming: true,
      jail: { uid: jailId, gid: jailId, chroot: p('jail') },
    });
    // Sockets and FIFOs of an earlier QEMU (a hibernated or crashed one) would be taken for this one's.
    await unlink(f.qmp).catch(() => {});
    await makeControlPipes(f.control);
    const stateFd = openSync(hibernated ?? snap.state, 'r');
    const logFd = openSync(p('qemu.log'), 'a');
    // Detached, so it outlives a control-plane restart (not -daemonize: its fork is what the seccomp filter forbids).
    // Jailed in the sandbox's network namespace plus mount, IPC and UTS namespaces of its own (not pid: its pid
    // file must name it as the host sees it), and it joins its cgroup before exec so every byte it allocates is charged there.
    const jail = ['--', 'unshare', '--mount', '--propagation', 'private', '--ipc', '--uts', '--'];
    const child = spawn(
      'nsenter',
      [
        `--net=${spec.netnsPath}`,
        ...jail,
        'sh',
        '-c',
        'for f in $MOAT_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; exec "$@"',
        'sh',
        'qemu-system-x86_64',
        ...args,
      ],
      {
        detached: true,
        stdio: ['ignore', logFd, logFd, stateFd],
        env: { ...process.env, MOAT_CGROUP_PROCS: procs.join(' ') },
      },
    );
    closeSync(stateFd);
    closeSync(logFd);
    let exited: string | undefined;
    child.on('exit', (code, signal) => (exited = `exit ${code ?? signal}`));
    child.unref();
    while (!(await exists(f.qmp))) {
      if (exited) throw new Error(`QEMU failed to start (${exited}): ${await this.lastLines(spec.id)}`);
      await sleep(5);
    }
    if (hibernated) {
      await this.resumeFromSnapshot(f.qmp);
    } else {
      await Promise.all([this.resumeFromSnapshot(f.qmp), writeControl(f.control, configFor(spec, guest))]);
    }
    await this.waitReady(spec.id);
  }

  async hibernated(id: string): Promise<boolean> {
    return (await readCheckpoint(this.dir(id))) !== undefined;
  }

  /**
   * Stops the vCPUs, migrates the whole machine (device state and every page
   * of guest RAM: the VM maps its shape's snapshot file privately, so what it
   * changed lives only in its own memory) into `checkpoint/machine`, then
   * quits QEMU. QEMU is jailed (chroot, own uid, no exec): it streams to a
   * unix socket in its chroot that this process writes to the file.
   */
  async hibernate(id: string): Promise<HibernateResult> {
    const dir = this.dir(id);
    const state = await this.state(id);
    if (state !== 'running' && state !== 'paused') return savedBefore(dir, state, 'microVM');
    const ck = await startCheckpoint(dir);
    try {
      await this.migrateToFile(id, join(ck, 'machine'));
    } catch (err) {
      await clearCheckpoint(dir).catch(() => {});
      await this.stopProcesses(id);
      await removeVmCgroup(id).catch(() => {});
      return { checkpointed: false, reason: `QEMU could not save the machine: ${(err as Error).message}` };
    }
    await this.qmp(id, (q) => q.execute('quit')).catch(() => {});
    await this.stopProcesses(id);
    await removeVmCgroup(id).catch(() => {});
    return { checkpointed: true, bytes: (await completeCheckpoint(dir, this.name)).bytes };
  }

  private async migrateToFile(id: string, file: string): Promise<void> {
    const jail = join(this.dir(id), 'jail');
    const sock = join(jail, 'hibernate.sock');
    await unlink(sock).catch(() => {});
    const out = createWriteStream(file, { mode: 0o600 });
    let received: Promise<void> = Promise.reject(new Error('QEMU never connected'));
    received.catch(() => {});
    const server = createServer({ allowHalfOpen: false }, (conn) => {
      received = new Promise<void>((resolve, reject) => {
        conn.pipe(out);
        out.on('finish', resolve);
        out.on('error', reject);
        conn.on('error', reject);
      });
      server.close();
    });
    await new Promise<void>((resolve, reject) => server.listen(sock, resolve).on('error', reject));
    try {
      // QEMU runs as the VM's own uid, chrooted in `jail`: it needs to reach the socket at /hibernate.sock.
      await chmod(jail, 0o711);
      await chmod(sock, 0o777);
      await this.qmp(id, async (q) => {
        await q.execute('stop');
        await q.execute('migrate-set-capabilities', IGNORE_SHARED);
        // The default (32 MiB/s) is for live migration over a network; this is a stopped VM going to a local file.
        await q.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 2 ** 30 });
        await q.execute('migrate', { uri: 'unix:/hibernate.sock' });
        for (;;) {
          const m = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
          if (m.status === 'completed') break;
          if (m.status === 'failed' || m.status === 'cancelled') throw new Error(m['error-desc'] ?? m.status);
          await sleep(10);
        }
      });
      await received;
    } finally {
      server.close();
      await chmod(jail, 0o700).catch(() => {});
      await unlink(sock).catch(() => {});
    }
    if ((await stat(file)).size === 0) throw new Error('the saved machine is empty');
  }

  async wake(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<WakeResult> {
    const dir = this.dir(spec.id);
    if (!(await this.hibernated(spec.id))) {
      await this.create(spec, opts);
      return { restored: false, reason: 'no saved machine: started again on its disks' };
    }
    try {
      await this.launch(spec, opts, join(checkpointDir(dir), 'machine'));
    } catch (err) {
      await this.create(spec, opts);
      return { restored: false, reason: `the saved machine could not be restored (${(err as Error).message}): started again on its disks` };
    }
    await clearCheckpoint(dir);
    // The guest's clock stood still while it was on disk: give it the host's time (best effort).
    await this.control(spec.id, 'time', [String(Math.floor(Date.now() / 1000))], 5000).catch(() => {});
    return { restored: true };
  }

  /** Loads the snapshot's state (inherited as fd 3) and runs the VM. */
  private async resumeFromSnapshot(qmpPath: string) {
    const qmp = await Qmp.connect(qmpPath);
    try {
      await qmp.execute('migrate-set-capabilities', IGNORE_SHARED);
      await qmp.execute('migrate-incoming', { uri: 'fd:3' });
      for (;;) {
        const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (m.status === 'completed') break;
        if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`the microVM did not resume from its snapshot: ${m['error-desc'] ?? m.status}`);
        await sleep(5);
      }
      const { status } = await qmp.execute<{ status: string }>('query-status');
      if (status !== 'running') await qmp.execute('cont');
    } finally {
      qmp.close();
    }
  }

  private async startRelay(id: string, netnsPath: string) {
    const sock = join(this.dir(id), 'sock', 'agent.sock');
    // One forked socat per connection: each agent operation keeps its own connection, as with a container's unix socket.
    // Its only messages are refused connections while the guest starts, which the agent client reports itself.
    const child = spawn(
      'nsenter',
      [`--net=${netnsPath}`, '--', 'socat', `UNIX-LISTEN:${sock},fork,mode=600,unlink-early`, `TCP:${GUEST_AGENT.host}:${GUEST_AGENT.port},nodelay`],
      {
        detached: true,
        stdio: 'ignore',
      },
    );
    child.unref();
    await writeFile(join(this.dir(id), 'relay.pid'), String(child.pid));
  }

  private async waitReady(id: string): Promise<void> {
    const timeout = this.opts.readyTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeout;
    const agent = this.agent(id);
    for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
      try {
        await agent.ping(2000);
        return;
      } catch {
        /* the guest is still mounting its disks */
      }
      if ((await this.state(id)) !== 'running') {
        throw new Error(`the microVM stopped while starting: ${await this.lastLines(id)}`);
      }
      if (Date.now() > deadline) throw new Error(`the microVM's agent did not answer within ${timeout} ms: ${await this.lastLines(id)}`);
      await sleep(delay);
    }
  }

  private async lastLines(id: string) {
    const f = vmFiles(this.dir(id));
    const logs = await Promise.all([join(this.dir(id), 'qemu.log'), f.kernelLog, f.log].map((l) => readFile(l, 'utf8').catch(() => '')));
    return logs.join('\n').trim().split('\n').slice(-6).join('\n');
  }

  async destroy(id: string): Promise<void> {
    await this.stopProcesses(id);
    await removeVmCgroup(id);
    await rm(this.dir(id), { recursive: true, force: true });
  }

  /** As the runc driver does from the host: the guest's PID 1 enters the sandbox's UTS namespace and rewrites its bind-mounted files. */
  async setHostname(id: string, hostname: string): Promise<void> {
    await this.control(id, 'hostname', [hostname]).catch((err: Error) => {
      throw new Error(`setting the hostname in the microVM failed: ${err.message}`);
    });
  }

  async state(id: string): Promise<RuntimeState> {
    if (!(await exists(this.dir(id)))) return 'missing';
    const [qemu, relay] = await Promise.all([this.livePid(id, 'qemu.pid'), this.livePid(id, 'relay.pid')]);
    if (!qemu || !relay) return 'stopped';
    // QEMU's processes are alive: only a paused VM says so (a monitor that does not answer is not a stopped VM).
    const status = await this.qmp(id, (q) => q.execute<{ status: string }>('query-status')).then(
      (r) => r.status,
      () => 'unknown',
    );
    return status === 'paused' ? 'paused' : 'running';
  }

  /** QEMU stops the vCPUs; the guest's RAM and devices stay as they are. */
  async pause(id: string): Promise<void> {
    await this.qmp(id, (q) => q.execute('stop'));
  }

  async resume(id: string): Promise<void> {
    await this.qmp(id, (q) => q.execute('cont'));
  }

  private async qmp<T>(id: string, use: (q: Qmp) => Promise<T>): Promise<T> {
    const q = await Qmp.connect(vmFiles(this.dir(id)).qmp);
    try {
      return await use(q);
    } finally {
      q.close();
    }
  }

  async listIds(): Promise<string[]> {
    return readdir(this.sandboxesDir).catch(() => [] as string[]);
  }

  usage(id: string) {
    return readUsage(id);
  }

  async degraded(): Promise<string | undefined> {
    return (await this.prepare()).accel.warning;
  }

  private guestInit() {
    return this.opts.guestInit ?? fileURLToPath(new URL('../../../guest/init', import.meta.url));
  }

  /** The pid in the file if that process is alive and still ours (its command line names this sandbox's directory). */
  private async livePid(id: string, file: string): Promise<number | undefined> {
    const pid = Number((await readFile(join(this.dir(id), file), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    return cmdline.includes(this.dir(id)) ? pid : undefined;
  }

  private async stopProcesses(id: string) {
    for (const file of ['qemu.pid', 'relay.pid']) {
      const pid = await this.livePid(id, file);
      if (!pid) continue;
      // The relay is a process group (socat and its per-connection children).
      try {
        process.kill(file === 'relay.pid' ? -pid : pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      for (let i = 0; i < 200 && (await this.livePid(id, file)); i++) await sleep(10);
    }
  }
}

/** Whole MiB of RAM and whole vCPUs (at least one): a fractional CPU limit is enforced by the cgroup's quota. */
function vmShape(spec: SandboxRuntimeSpec): VmShape {
  return { memoryMiB: Math.ceil(spec.limits.memoryBytes / MiB), vcpus: Math.max(1, Math.ceil(spec.limits.cpuMillicores / 1000)) };
}

/** A uid of its own per VM for QEMU after start-up (2^30 + 20 bits of the id), outside every container's user namespace range. */
function vmUid(id: string) {
  return 2 ** 30 + (createHash('sha256').update(id).digest().readUInt32BE(0) & 0xfffff);
}

/** The guest's own paths of what the runc driver takes from the host (packages/guest/init makes them). */
const IN_GUEST = {
  init: '/bin/moat-init',
  data: '/run/moat/data',
  hosts: '/run/moat/hosts',
  hostname: '/run/moat/hostname',
  /** Fresh for every VM resumed from a snapshot. */
  machineId: '/run/moat/machine-id',
  /** The guest's own network namespace: the sandbox joins it, as a runc sandbox joins the one the host made. */
  netns: '/proc/1/ns/net',
};

/**
 * The runc driver's OCI spec, for the OCI runtime inside the guest (crun): the same process,
 * capabilities, seccomp filter, no_new_privs, namespaces, user-namespace
 * mapping and masked and read-only paths. What differs: moat-init listens
 * on the control link instead of a socket the host bind-mounts; the guest
 * adds a fresh /etc/machine-id (VMs of one snapshot must not share one); and
 * memory and CPU are left to the VM (its RAM, its vCPUs under the host
 * cgroup's quota), which a second limit inside would count twice.
 */
function guestSpec(spec: SandboxRuntimeSpec) {
  const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOSTNAME: spec.hostname, ...spec.env };
  const oci = ociSpec({
    id: spec.id,
    hostname: spec.hostname,
    command: spec.command,
    user: spec.user,
    env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    workingDir: spec.workingDir || '/',
    limits: spec.limits,
    initBinary: IN_GUEST.init,
    sockDir: '',
    dataDir: IN_GUEST.data,
    dataMountPath: spec.dataMountPath,
    netnsPath: IN_GUEST.netns,
    etcHosts: IN_GUEST.hosts,
    etcHostname: IN_GUEST.hostname,
    capSwap: false,
  });
  const [init, ...args] = oci.process.args;
  return {
    ...oci,
    process: { ...oci.process, args: [init!, '--listen-tcp', `${GUEST_AGENT.host}:${GUEST_AGENT.port}`, ...args] },
    mounts: [
      ...oci.mounts.filter((m) => m.destination !== IN_SANDBOX.sockDir),
      { destination: '/etc/machine-id', type: 'bind', source: IN_GUEST.machineId, options: ['bind', 'ro'] },
    ],
    linux: { ...oci.linux, resources: { devices: oci.linux.resources.devices, pids: oci.linux.resources.pids } },
  };
}

/** The config /init reads after resume (packages/guest/init): identity, clock, entropy, network and the sandbox's OCI spec. */
function configFor(spec: SandboxRuntimeSpec, guest: { address: string; gateway: string }): Buffer {
  const config = guestSpec(spec);
  const oci = Buffer.from(JSON.stringify(config));
  const lines = [
    'moat-config 2',
    `hostname ${spec.hostname}`,
    `time ${Math.floor(Date.now() / 1000)}`,
    `seed ${randomBytes(64).toString('hex')}`,
    `net ${guest.address} ${guest.gateway}`,
    `root ${config.linux.uidMappings[0]!.hostID}`,
    `spec ${oci.length}`,
  ];
  if (/\s/.test(spec.hostname)) throw new Error(`"${spec.hostname}" cannot contain whitespace`);
  return Buffer.concat([Buffer.from(`${lines.join('\n')}\n`), oci, Buffer.from('end\n')]);
}

/** An ELF executable without a program interpreter (PT_INTERP) needs no dynamic loader. */
function isStaticElf(b: Buffer): boolean {
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  for (let i = 0; i < b.readUInt16LE(56); i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );
