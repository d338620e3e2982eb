import { open, mkdir, readFile } from 'node:fs/promises';
import { dirname, relative } from 'node:path';
import { run } from './run.js';
import { runInShell } from './shell.js';
import { USERNS_HOST_BASE, type IdRange } from './userns.js';

/**
 * Disk limits are real filesystems: a sparse file formatted ext4 and
 * loop-mounted. It works on any host filesystem, needs no quota support, and
 * a full disk inside a sandbox is ENOSPC for that sandbox only.
 */
export async function createExt4(file: string, sizeBytes: number, opts: { journal: boolean; rootOwner: number }): Promise<void> {
  const fh = await open(file, 'wx', 0o600); // a sandbox's data: only root on the host reads the image
  try {
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
  await runInShell('mkfs.ext4', [
    '-q',
    '-F',
    '-m',
    '0',
    '-E',
    `lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=${opts.rootOwner}:${opts.rootOwner}`,
    ...(opts.journal ? [] : ['-O', '^has_journal']),
    file,
  ]);
}

/** Loop-mounts an ext4 image (nosuid, nodev) through moat-idmap, whose cost does not grow with the host's mounts. */
export async function mountLoop(helper: string, file: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  if (await isMountPoint(target)) return;
  await runInShell(helper, ['loop', file, target]);
}

/**
 * An overlay of an image's layers (lowest first) under a writable upper, or
 * read-only without one. The layer paths are given relative to the folder
 * they share, so that an image of many layers fits in the kernel's one page
 * of mount options.
 */
export async function mountOverlay(layers: string[], target: string, rw?: { upper: string; work: string }, as?: OverlayMounter): Promise<void> {
  await mkdir(target, { recursive: true });
  if (await isMountPoint(target)) return;
  const base = commonDir(layers);
  const lower = [...layers].reverse().map((l) => relative(base, l) || '.');
  const options = `lowerdir=${lower.join(':')}${rw ? `,upperdir=${rw.upper},workdir=${rw.work}` : ''}`;
  if (options.length > 4000) throw new Error(`the image has too many layers (${layers.length}) for one overlay mount`);
  // A read-only overlay wants two lower layers: a one-layer image is its own tree.
  if (!rw && layers.length === 1) await run('mount', ['--bind', '-o', 'ro', layers[0]!, target]);
  else if (as) await runInShell(as.helper, ['overlay', String(as.fsId), options, target], { cwd: base });
  else await run('mount', ['-t', 'overlay', 'overlay', '-o', options, target], { cwd: base });
}

/** Who mounts an overlay whose upper is an idmapped view: moat-idmap, as the sandbox root's host id (see moat-idmap.c). */
export interface OverlayMounter {
  helper: string;
  fsId: number;
}

/**
 * Bind-mounts each [source, target] with the canonical on-disk ids shown as
 * the range's (userns.ts), in one moat-idmap call; targets already mounted
 * are left as they are.
 */
export async function mountIdmapped(helper: string, ids: IdRange, pairs: [string, string][]): Promise<void> {
  const todo: string[] = [];
  for (const [source, target] of pairs) {
    await mkdir(target, { recursive: true });
    if (!(await isMountPoint(target))) todo.push(source, target);
  }
  if (todo.length) await runInShell(helper, ['bind', String(USERNS_HOST_BASE), String(ids.hostId), String(ids.size), ...todo]);
}

export function commonDir(paths: string[]): string {
  const parts = paths.map((p) => p.split('/'));
  let n = 0;
  while (parts.every((p) => p[n] === parts[0]![n] && n < p.length - 1)) n++;
  return parts[0]!.slice(0, n).join('/') || '/';
}

/** Unmount if mounted; lazily when busy so teardown never wedges. Loop devices auto-clear. */
export async function unmount(target: string): Promise<void> {
  if (!(await isMountPoint(target))) return;
  const r = await run('umount', [target], { allowFail: true });
  if (r.code !== 0) await run('umount', ['-l', target], { allowFail: true });
}

/** The same for several targets, in order, in one moat-idmap call (umount(8) reads the whole mount table each time). */
export async function unmountAll(helper: string, targets: string[]): Promise<void> {
  const mounted: string[] = [];
  for (const t of targets) if (await isMountPoint(t)) mounted.push(t);
  if (mounted.length) await runInShell(helper, ['umount', ...mounted]);
}

export async function mountPointsUnder(prefix: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const dir = prefix.endsWith('/') ? prefix : prefix + '/';
  return text
    .split('\n')
    .map((l) => unescapeMount(l.split(' ')[4] ?? ''))
    .filter((p) => p.startsWith(dir));
}

/**
 * Whether `p` is the root of a mount: it is on another mount than its parent. Read from the mount ids the kernel
 * gives open files (/proc/self/fdinfo), not from /proc/self/mountinfo, whose size (and cost) grows with every
 * sandbox on the host.
 */
export async function isMountPoint(p: string): Promise<boolean> {
  const [own, parent] = await Promise.all([mountId(p), mountId(dirname(p))]);
  return own !== undefined && parent !== undefined && own !== parent;
}

/** O_PATH: opens without reading, for any file type and mode. Node's fs.constants lacks it. */
const O_PATH = 0o10000000;

async function mountId(p: string): Promise<number | undefined> {
  const fh = await open(p, O_PATH).catch(() => undefined);
  if (!fh) return undefined;
  try {
    const m = /^mnt_id:\s*(\d+)/m.exec(await readFile(`/proc/self/fdinfo/${fh.fd}`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } finally {
    await fh.close();
  }
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
