import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, readdir, rm, writeFile, access, unlink } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RuntimeClassName } from '@moat/core';
import { AgentClient } from '../agent/index.js';
import { memswAvailable, readUsage } from '../cgroups.js';
import { commonDir, createExt4, isMountPoint, mountIdmapped, mountLoop, mountOverlay, unmount, unmountAll } from '../disk.js';
import { ociSpec } from '../oci/spec.js';
import { runInShell } from '../shell.js';
import { defaultHostnameHelper, defaultIdmapHelper, defaultInitBinary, ensureDir } from '../paths.js';
import { run, which } from '../run.js';
import { HostnameSetter } from '../hostname.js';
import { hostUid } from '../userns.js';
import { SANDBOX_USERNS_LIMITS } from '../host-limits.js';
import { checkpointDir, clearCheckpoint, completeCheckpoint, readCheckpoint, savedBefore, startCheckpoint } from '../checkpoint/index.js';
import type {
  CreateOptions,
  DiskKind,
  DriverContext,
  HibernateResult,
  QuiesceContext,
  RuntimeDriver,
  RuntimeState,
  SandboxRuntimeSpec,
  WakeResult,
} from './types.js';

export interface OciDriverOptions extends DriverContext {
  readyTimeoutMs?: number;
}

/** Where an OCI runtime keeps its things, relative to the driver root. */
export interface OciLayout {
  /** One folder per sandbox: its bundle, disks, sockets and log. */
  sandboxes: string;
  /** The runtime's own state (`--root`): only Moat's containers are in it. */
  state: string;
}

/**
 * What the OCI runtime classes (runc, gVisor) share: an OCI bundle per
 * sandbox. Rootfs = read-only image + overlay upper on the sandbox's own ext4
 * disk; `/data` on a second ext4 disk; moat-init as PID 1 serving exec and
 * files over a unix socket. Subclasses name the runtime's binary and folders
 * and save and restore processes their runtime's way.
 */
export abstract class OciDriver implements RuntimeDriver {
  abstract readonly name: RuntimeClassName;
  protected readonly sandboxesDir: string;
  protected readonly stateDir: string;
  private readonly initBinary: string;
  private readonly hostnameHelper: string;
  private readonly hostnames: HostnameSetter;
  private readonly idmapHelper: string;

  /** Whether the sandbox's system calls reach the host kernel, whose per-namespace limits then apply (not gVisor's sentry). */
  protected readonly hostKernel: boolean = true;

  /** `bin`: the program every runtime command runs. */
  protected constructor(
    protected readonly opts: OciDriverOptions,
    protected readonly bin: string,
    layout: OciLayout,
  ) {
    this.sandboxesDir = join(opts.root, layout.sandboxes);
    this.stateDir = join(opts.root, layout.state);
    this.initBinary = opts.initBinary ?? defaultInitBinary();
    this.hostnameHelper = opts.hostnameHelper ?? defaultHostnameHelper();
    this.hostnames = new HostnameSetter(this.hostnameHelper);
    this.idmapHelper = opts.idmapHelper ?? defaultIdmapHelper();
  }

  async check(): Promise<void> {
    if (!(await which(this.bin))) throw new Error(`${this.bin} is not installed: apt-get install ${this.bin}`);
    for (const tool of ['mkfs.ext4', 'mount']) {
      if (!(await which(tool))) throw new Error(`${tool} is missing: apt-get install e2fsprogs mount`);
    }
    for (const bin of [this.initBinary, this.hostnameHelper, this.idmapHelper]) {
      await access(bin).catch(() => {
        throw new Error(`${bin} is not built: run \`make -C packages/agent\``);
      });
    }
    // 0711: sandbox roots (uids of their user namespaces) must traverse to their bundles, but not list anything.
    for (const d of [this.sandboxesDir, this.stateDir]) await ensureDir(d, 0o711);
  }

  dir(id: string) {
    return join(this.sandboxesDir, id);
  }

  logPath(id: string) {
    return join(this.dir(id), 'log');
  }

  agent(id: string) {
    return new AgentClient(join(this.dir(id), 'sock', 'agent.sock'));
  }

  writableLayer(id: string) {
    return { image: join(this.dir(id), 'disk.img') };
  }

  /** Where the host mounts the disk: `data` (the sandbox's /data) or `disk` (the writable layer, under the overlay). */
  private hostMount(id: string, what: DiskKind) {
    return join(this.dir(id), what === 'data' ? 'data' : 'disk');
  }

  /**
   * The disk's host mount is frozen (`fsfreeze`) while `copy` reads the image, after a sync inside when the
   * sandbox runs (gVisor keeps its own cache). A frozen cgroup would not do: it leaves dirty pages in the
   * host's page cache, not in the image. A disk not mounted (a stopped sandbox) is copied as it is.
   */
  async quiesce<T>(id: string, what: DiskKind, copy: () => Promise<T>, ctx: QuiesceContext): Promise<T> {
    const mount = this.hostMount(id, what);
    if (!(await isMountPoint(mount))) return copy();
    if (ctx.running)
      await this.agent(id)
        .exec({ command: ['sync'] })
        .done.catch(() => {}); // best effort: gVisor's cache
    await run('fsfreeze', ['-f', mount]);
    try {
      return await copy();
    } finally {
      await run('fsfreeze', ['-u', mount], { allowFail: true });
    }
  }

  async thaw(id: string, what: DiskKind): Promise<void> {
    const mount = this.hostMount(id, what);
    if (await isMountPoint(mount)) await run('fsfreeze', ['-u', mount], { allowFail: true });
  }

  protected runtimeArgs(): string[] {
    return ['--root', this.stateDir];
  }

  async create(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<void> {
    const dir = this.dir(spec.id);
    const p = (...s: string[]) => join(dir, ...s);
    // A fresh start: saved processes (a hibernate's checkpoint) no longer match the disks once this runs.
    await clearCheckpoint(dir);
    await this.mountDisks(spec);
    await this.writeBundle(spec);
    // A container left over from a crash would make `run` fail on the id. Looked for first: a runtime
    // command costs tens of milliseconds (runsc's most of all), which a fresh create need not pay.
    if (await this.hasState(spec.id)) await runInShell(this.bin, [...this.runtimeArgs(), 'delete', '--force', spec.id], { allowFail: true });
    await opts.ready;
    await this.startContainer(spec.id, p('bundle'), p('log'));
    await this.waitReady(spec.id);
  }

  /**
   * The sandbox's disks and rootfs overlay, made once and mounted (idempotent).
   * The disks and the image's layers keep canonical ids (userns.ts); the
   * sandbox gets idmapped views of them in its own range (`views/`), and the
   * overlay is made of those views, so nothing is chowned per sandbox.
   */
  private async mountDisks(spec: SandboxRuntimeSpec): Promise<void> {
    const dir = this.dir(spec.id);
    const p = (...s: string[]) => join(dir, ...s);
    await mkdir(p('bundle', 'rootfs'), { recursive: true, mode: 0o711 });
    await chmod(dir, 0o711);
    await writeFile(p('spec.json'), JSON.stringify(spec));
    const root = hostUid(0);

    // Writable layer and /data: created once, kept across restarts of the sandbox; made side by side.
    const writable = async () => {
      if (!(await exists(p('disk.img')))) await createExt4(p('disk.img'), spec.limits.diskBytes, { journal: false, rootOwner: 0 });
      await mountLoop(this.idmapHelper, p('disk.img'), p('disk'));
      for (const d of ['upper', 'work']) {
        await mkdir(p('disk', d), { recursive: true });
        // overlayfs makes its work dir as the sandbox's root (through the view): both belong to it.
        await chown(p('disk', d), root, root);
      }
    };
    const data = async (image: string) => {
      if (!(await exists(image))) await createExt4(image, spec.limits.dataBytes, { journal: true, rootOwner: root });
      await mountLoop(this.idmapHelper, image, p('data'));
      // A named volume may have been made for another runtime: its root belongs to this sandbox's root.
      if (spec.dataImage) await chown(p('data'), root, root);
    };
    await Promise.all([writable(), data(spec.dataImage ?? p('data.img'))]);
    // A rootfs mounted before sandboxes had views of their own (an older Moat) is made again from them.
    if (!(await isMountPoint(p('views', 'disk')))) await unmount(p('bundle', 'rootfs'));
    const layerStore = commonDir(spec.image.layers);
    await mountIdmapped(this.idmapHelper, spec.ids, [
      [layerStore, p('views', 'layers')],
      [p('disk'), p('views', 'disk')],
      [p('data'), p('views', 'data')],
    ]);
    await mountOverlay(
      spec.image.layers.map((l) => join(p('views', 'layers'), relative(layerStore, l))),
      p('bundle', 'rootfs'),
      { upper: p('views', 'disk', 'upper'), work: p('views', 'disk', 'work') },
      { helper: this.idmapHelper, fsId: spec.ids.hostId },
    );
  }

  private async writeBundle(spec: SandboxRuntimeSpec): Promise<void> {
    const dir = this.dir(spec.id);
    const p = (...s: string[]) => join(dir, ...s);
    // The socket directory is the sandbox's alone: owned by its root directly, not through a view.
    await mkdir(p('sock'), { recursive: true });
    await chown(p('sock'), spec.ids.hostId, spec.ids.hostId);
    await unlink(p('sock', 'agent.sock')).catch(() => {});
    await writeHostFiles(dir, spec.hostname);

    const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOSTNAME: spec.hostname, ...spec.env };
    const config = ociSpec({
      id: spec.id,
      hostname: spec.hostname,
      command: spec.command,
      user: spec.user,
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      workingDir: spec.workingDir,
      limits: spec.limits,
      initBinary: this.initBinary,
      sockDir: p('sock'),
      dataDir: p('views', 'data'),
      dataMountPath: spec.dataMountPath,
      netnsPath: spec.netnsPath,
      etcHosts: p('hosts'),
      etcHostname: p('hostname'),
      capSwap: await memswCached(),
      ids: spec.ids,
    });
    if (this.hostKernel) {
      // The sandbox's user namespace gets its own limits before anything in it runs (host-limits.ts).
      const limits = Object.entries(SANDBOX_USERNS_LIMITS).map(([k, v]) => `${k}=${v}`);
      Object.assign(config, { hooks: { createRuntime: [{ path: this.idmapHelper, args: ['moat-idmap', 'userns-limits', ...limits] }] } });
    }
    await this.adjustSpec(config);
    await writeFile(p('bundle', 'config.json'), JSON.stringify(config));
  }

  /** Hook for runtimes that share the bundle format but need a different spec (gVisor). */
  protected async adjustSpec(_config: ReturnType<typeof ociSpec>): Promise<void> {}

  /** Runs a runtime command whose container outlives it: stdio goes to the sandbox log (a pipe would be held open). */
  protected detached(args: string[], log: string): Promise<{ code: number | null; tail: string }> {
    const logFd = openSync(log, 'a');
    return new Promise((resolve, reject) => {
      const child = spawn(this.bin, args, { stdio: ['ignore', logFd, logFd] });
      closeSync(logFd);
      child.on('error', reject);
      child.on('exit', async (code) => {
        const tail = code === 0 ? '' : (await readFile(log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join('\n');
        resolve({ code, tail });
      });
    });
  }

  private async startContainer(id: string, bundle: string, log: string): Promise<void> {
    // Detached: the container outlives this process, so a control-plane restart leaves it running.
    // Its stdio (and runc's own errors) go to the sandbox log; a pipe would be held open by the container.
    const r = await runInShell(this.bin, [...this.runtimeArgs(), 'run', '--detach', '--bundle', bundle, id], { log, allowFail: true });
    if (r.code === 0) return;
    const tail = (await readFile(log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join('\n');
    throw new Error(`${this.bin} run failed (exit ${r.code}): ${tail}`);
  }

  private async waitReady(id: string): Promise<void> {
    const deadline = Date.now() + (this.opts.readyTimeoutMs ?? 15_000);
    const sock = join(this.dir(id), 'sock', 'agent.sock');
    const agent = this.agent(id);
    for (let delay = 1; ; delay = Math.min(delay * 2, 20)) {
      if (await exists(sock)) {
        try {
          await agent.ping(1000);
          return;
        } catch {
          /* listening not yet */
        }
      }
      if (Date.now() > deadline) {
        const state = await this.state(id);
        throw new Error(`sandbox init did not become ready within ${this.opts.readyTimeoutMs ?? 15_000} ms (container ${state})`);
      }
      await sleep(delay);
    }
  }

  async destroy(id: string): Promise<void> {
    const dir = this.dir(id);
    if (await this.hasState(id)) await runInShell(this.bin, [...this.runtimeArgs(), 'delete', '--force', id], { allowFail: true });
    // The overlay first, then the views it is made of, then the disks under them.
    await unmountAll(
      this.idmapHelper,
      ['bundle/rootfs', 'views/layers', 'views/disk', 'views/data', 'data', 'disk'].map((m) => join(dir, m)),
    );
    await rm(dir, { recursive: true, force: true });
  }

  pause(id: string): Promise<void> {
    return this.freeze(id, 'pause', 'paused');
  }

  resume(id: string): Promise<void> {
    return this.freeze(id, 'resume', 'running');
  }

  /** One runtime call on the fast path; a failure is no failure when the container already is where it was asked to go. */
  private async freeze(id: string, cmd: 'pause' | 'resume', to: RuntimeState): Promise<void> {
    const r = await run(this.bin, [...this.runtimeArgs(), cmd, id], { allowFail: true });
    if (r.code !== 0 && (await this.state(id)) !== to) throw new Error(`${this.bin} ${cmd} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim()}`);
  }

  async hibernated(id: string): Promise<boolean> {
    return (await readCheckpoint(this.dir(id))) !== undefined;
  }

  /**
   * Checkpoints the container (`checkpoint`: CRIU for runc, the sentry's own
   * for gVisor), which stops it; its mounts stay (they hold no memory). When the checkpoint
   * fails the container is killed, its disks kept, and the reason returned.
   */
  async hibernate(id: string): Promise<HibernateResult> {
    const dir = this.dir(id);
    const state = await this.state(id);
    if (state !== 'running' && state !== 'paused') return savedBefore(dir, state, 'container');
    const ck = await startCheckpoint(dir);
    const failure = await this.checkpoint(id, ck, state === 'paused');
    if (!failure) {
      // runc removes a checkpointed container itself; runsc leaves a stopped one behind.
      await run(this.bin, [...this.runtimeArgs(), 'delete', '--force', id], { allowFail: true });
      return { checkpointed: true, bytes: (await completeCheckpoint(dir, this.name)).bytes };
    }
    await clearCheckpoint(dir).catch(() => {});
    await run(this.bin, [...this.runtimeArgs(), 'delete', '--force', id], { allowFail: true });
    return { checkpointed: false, reason: failure };
  }

  /** Runs the runtime's checkpoint into `ck`; returns why it failed, or undefined on success. */
  protected abstract checkpoint(id: string, ck: string, paused: boolean): Promise<string | undefined>;

  /** Restores from the checkpoint in `ck`; returns why it failed, or undefined once the container runs again. */
  protected abstract restore(id: string, ck: string): Promise<string | undefined>;

  async wake(spec: SandboxRuntimeSpec, opts: CreateOptions = {}): Promise<WakeResult> {
    const dir = this.dir(spec.id);
    if (!(await this.hibernated(spec.id))) {
      await this.create(spec, opts);
      return { restored: false, reason: 'no saved processes: started again on its disks' };
    }
    // The bundle the checkpoint was taken from is reused as it is (same mounts, same config).
    await this.mountDisks(spec);
    await run(this.bin, [...this.runtimeArgs(), 'delete', '--force', spec.id], { allowFail: true });
    await opts.ready;
    const failure = await this.restore(spec.id, checkpointDir(dir));
    if (!failure) {
      try {
        await this.waitReady(spec.id);
        await clearCheckpoint(dir);
        return { restored: true };
      } catch (err) {
        await run(this.bin, [...this.runtimeArgs(), 'delete', '--force', spec.id], { allowFail: true });
        await this.create(spec, opts);
        return { restored: false, reason: `restored processes did not answer (${(err as Error).message}): started again on its disks` };
      }
    }
    await run(this.bin, [...this.runtimeArgs(), 'delete', '--force', spec.id], { allowFail: true });
    await this.create(spec, opts);
    return { restored: false, reason: `${failure}: started again on its disks` };
  }

  async setHostname(id: string, hostname: string): Promise<void> {
    // The files are bind-mounted by inode: rewrite them in place, never replace them.
    await writeHostFiles(this.dir(id), hostname);
    const state = JSON.parse(await readFile(join(this.stateDir, id, 'state.json'), 'utf8')) as { init_process_pid: number };
    // The sandbox's root lacks CAP_SYS_ADMIN by design; the host enters only its UTS namespace to do it.
    await this.hostnames.set(state.init_process_pid, hostname);
  }

  /** Whether the runtime keeps any state for `id`: runc a folder named after it, runsc files that start with it. */
  private async hasState(id: string): Promise<boolean> {
    const entries = await readdir(this.stateDir).catch(() => [] as string[]);
    return entries.some((e) => e.startsWith(id));
  }

  async state(id: string): Promise<RuntimeState> {
    const r = await run(this.bin, [...this.runtimeArgs(), 'state', id], { allowFail: true });
    if (r.code !== 0) return 'missing';
    const status = (JSON.parse(r.stdout) as { status: string }).status;
    return status === 'running' ? 'running' : status === 'paused' ? 'paused' : 'stopped';
  }

  async listIds(): Promise<string[]> {
    const dirs = await readdir(this.sandboxesDir).catch(() => [] as string[]);
    const r = await run(this.bin, [...this.runtimeArgs(), 'list', '--format', 'json'], { allowFail: true });
    const containers = r.code === 0 ? ((JSON.parse(r.stdout || 'null') ?? []) as { id: string }[]).map((c) => c.id) : [];
    return [...new Set([...dirs, ...containers])];
  }

  usage(id: string) {
    return readUsage(id);
  }
}

/** The sandbox's /etc/hostname and /etc/hosts, bind-mounted by inode: always rewritten in place, never replaced. */
export function writeHostFiles(dir: string, hostname: string) {
  return Promise.all([
    writeFile(join(dir, 'hostname'), `${hostname}\n`),
    writeFile(join(dir, 'hosts'), `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${hostname}\n`),
  ]);
}

let memsw: Promise<boolean> | undefined;
const memswCached = () => (memsw ??= memswAvailable());

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );
