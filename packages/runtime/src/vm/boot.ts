import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { run } from '../run.js';

/** What a microVM boots: Debian's kernel and our initramfs (busybox, packages/guest/init, moat-init, crun, modules). */
export interface GuestBoot {
  kernel: string;
  initrd: string;
  /** Kernel release, e.g. 6.1.0-56-amd64. */
  release: string;
  /** Changes whenever anything that ends up in guest memory changes: names the snapshots made from it. */
  key: string;
}

/** Loaded in this order by the guest's /init (with their dependencies, which come first). */
const GUEST_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng', 'ext4', 'overlay'];

export interface BootOptions {
  cacheDir: string;
  initBinary: string;
  guestInit: string;
  busybox?: string;
  /** The OCI runtime that confines the workload inside the guest: the host's crun, with the libraries it links. */
  ociRuntime?: string;
  progress?: (line: string) => void;
}

/**
 * Debian's own kernel, taken from its linux-image package (downloaded with
 * apt, extracted and cached by release), not the host's /boot: the host may
 * run any kernel, and a packaged one gets Debian's security updates by
 * re-running setup. Its virtio and ext4 drivers are modules, so the
 * initramfs carries them; see docs/microvm.md for why not a custom kernel.
 */
export async function ensureGuestBoot(o: BootOptions): Promise<GuestBoot> {
  const release = process.env.MOAT_MICROVM_KERNEL_RELEASE ?? (await latestKernelRelease(o.cacheDir));
  const kdir = await ensureKernel(o.cacheDir, release, o.progress);
  const busybox = o.busybox ?? '/bin/busybox';
  const modules = await moduleFiles(kdir, release);
  const crun = o.ociRuntime ?? '/usr/bin/crun';
  const libraries = await sharedLibraries(crun);
  const hash = createHash('sha256').update(release);
  for (const f of [o.guestInit, o.initBinary, busybox, crun, ...libraries, ...modules]) hash.update(f.slice(f.lastIndexOf('/'))).update(await readFile(f));
  const key = hash.digest('hex').slice(0, 16);
  const dir = join(o.cacheDir, 'boot', key);
  const initrd = join(dir, 'initrd.gz');
  const kernel = join(kdir, 'boot', `vmlinuz-${release}`);
  if (await exists(initrd)) return { kernel, initrd, release, key };

  o.progress?.(`building the microVM initramfs for kernel ${release}`);
  await mkdir(join(o.cacheDir, 'boot'), { recursive: true });
  const tmp = await mkdtemp(join(o.cacheDir, 'boot', `.${key}-`));
  try {
    const root = join(tmp, 'root');
    for (const d of ['bin', 'lib/moat-modules', 'dev', 'proc', 'sys', 'run']) await mkdir(join(root, d), { recursive: true });
    await copyFile(o.guestInit, join(root, 'init'));
    await copyFile(busybox, join(root, 'bin', 'busybox'));
    await copyFile(o.initBinary, join(root, 'bin', 'moat-init'));
    await copyFile(crun, join(root, 'bin', 'crun'));
    // At the paths the host's loader and crun name them, so the guest's loader finds them without a cache.
    for (const lib of libraries) {
      await mkdir(join(root, dirname(lib)), { recursive: true });
      await copyFile(lib, join(root, lib));
    }
    await Promise.all(modules.map((m, i) => copyFile(m, join(root, 'lib', 'moat-modules', `${String(i).padStart(2, '0')}-${basename(m)}`))));
    await run('chmod', ['755', join(root, 'init'), join(root, 'bin', 'busybox'), join(root, 'bin', 'moat-init'), join(root, 'bin', 'crun')]);
    await run('sh', ['-c', 'cd "$1" && find . | sort | cpio --quiet -o -H newc --reproducible | gzip -1 > "$2"', 'sh', root, join(tmp, 'initrd.gz')]);
    await rm(root, { recursive: true });
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      // Another server built the same initramfs meanwhile: theirs is identical.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      await rm(tmp, { recursive: true, force: true });
    });
    await pruneOtherBoots(o.cacheDir, key);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return { kernel, initrd, release, key };
}

/**
 * The release linux-image-amd64 (Debian's kernel metapackage) points at in
 * the host's apt lists. Asking apt takes most of a second, so the answer is
 * kept until apt's package cache changes (an `apt-get update` that may bring
 * a new kernel).
 */
async function latestKernelRelease(cacheDir: string): Promise<string> {
  const aptCache = String((await stat('/var/cache/apt/pkgcache.bin').catch(() => undefined))?.mtimeMs ?? 0);
  const file = join(cacheDir, 'kernel-release.json');
  const known = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as { aptCache?: string; release?: string };
  if (known.aptCache === aptCache && known.release) return known.release;
  const r = await run('apt-cache', ['depends', 'linux-image-amd64'], { allowFail: true });
  const release = /Depends: linux-image-(\d[^\s]*-amd64)/.exec(r.stdout)?.[1];
  if (!release) throw new Error("cannot find Debian's kernel package for microVMs: `apt-cache depends linux-image-amd64` names none (run apt-get update)");
  await mkdir(cacheDir, { recursive: true });
  await writeFile(file, JSON.stringify({ aptCache, release }));
  return release;
}

async function ensureKernel(cacheDir: string, release: string, progress?: (l: string) => void): Promise<string> {
  if (!/^[0-9][0-9a-z.+-]*$/.test(release)) throw new Error(`bad kernel release "${release}"`);
  const dir = join(cacheDir, 'kernels', release);
  if (await exists(join(dir, 'boot', `vmlinuz-${release}`))) return dir;
  await mkdir(join(cacheDir, 'kernels'), { recursive: true });
  const tmp = await mkdtemp(join(cacheDir, 'kernels', `.${release}-`));
  try {
    progress?.(`downloading Debian's linux-image-${release} for microVMs (about 70 MB, once)`);
    await run('apt-get', ['download', '-q', `linux-image-${release}`], { cwd: tmp });
    const deb = (await readdir(tmp)).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download linux-image-${release} produced no .deb`);
    const root = join(tmp, 'root');
    await run('dpkg-deb', ['-x', join(tmp, deb), root]);
    // The package's postinst would run depmod; we need its modules.dep to resolve dependencies.
    await run('depmod', ['-b', root, release]);
    await rename(root, dir).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return dir;
}

/** The dynamic loader and libraries a host binary needs, by the absolute paths `ldd` names (none for a static one). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const r = await run('ldd', [binary], { allowFail: true });
  if (r.code !== 0 && !/not a dynamic executable/.test(r.stdout + r.stderr)) throw new Error(`ldd ${binary} failed: ${r.stderr.trim()}`);
  return [...r.stdout.matchAll(/(?:=> )?(\/\S+) \(0x/g)].map((m) => m[1]!);
}

/** The .ko files for GUEST_MODULES, dependencies first, each once. */
async function moduleFiles(kdir: string, release: string): Promise<string[]> {
  const files: string[] = [];
  for (const m of GUEST_MODULES) {
    const r = await run('modprobe', ['-d', kdir, '-S', release, '--show-depends', m]);
    for (const line of r.stdout.split('\n')) {
      const f = /^insmod (\S+)/.exec(line)?.[1];
      if (f && !files.includes(f)) files.push(f);
    }
  }
  return files;
}

/**
 * A new initramfs makes older ones and their snapshots unused: every VM
 * starts from the current one (a running VM keeps its mapped RAM file even
 * once it is unlinked).
 */
async function pruneOtherBoots(cacheDir: string, key: string) {
  for (const sub of ['boot', 'snapshots']) {
    for (const name of await readdir(join(cacheDir, sub)).catch(() => [] as string[])) {
      if (!name.startsWith(key) && !name.startsWith('.')) await rm(join(cacheDir, sub, name), { recursive: true, force: true });
    }
  }
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );
