import { open, mkdir, readFile } from 'node:fs/promises';
import { relative } from 'node:path';
import { run } from './run.js';
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
  await run('mkfs.ext4', [
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

export async function mountLoop(file: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  if (await isMountPoint(target)) return;
  await run('mount', ['-o', 'loop,nosuid,nodev', file, target]);
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
  else if (as) await run(as.helper, ['overlay', String(as.fsId), options, target], { cwd: base });
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
  if (todo.length) await run(helper, ['bind', String(USERNS_HOST_BASE), String(ids.hostId), String(ids.size), ...todo]);
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

export async function mountPointsUnder(prefix: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const dir = prefix.endsWith('/') ? prefix : prefix + '/';
  return text
    .split('\n')
    .map((l) => unescapeMount(l.split(' ')[4] ?? ''))
    .filter((p) => p.startsWith(dir));
}

export async function isMountPoint(p: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => unescapeMount(l.split(' ')[4] ?? '') === p);
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}
