import { mkdir, mkdtemp, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Image } from '../images/image.js';
import { mountOverlay, unmount } from '../disk.js';
import { run } from '../run.js';
import { USERNS_HOST_BASE, USERNS_SIZE } from '../userns.js';

const building = new Map<string, Promise<string>>();

/**
 * The image as a read-only ext4 disk shared by every microVM that runs it,
 * made once per image digest from its layers. The image store keeps rootfs files owned by
 * the container user-namespace range; a VM has its own kernel and no such
 * mapping, so ownership is shifted back (host 2^24+N → N) on the way.
 */
export function ensureBaseDisk(cacheDir: string, image: Image, progress?: (l: string) => void): Promise<string> {
  const file = join(cacheDir, 'images', `${image.digest.replace(/^sha256:/, '')}.ext4`);
  let p = building.get(file);
  if (!p) {
    p = build(file, image, progress).finally(() => building.delete(file));
    building.set(file, p);
  }
  return p;
}

async function build(file: string, image: Image, progress?: (l: string) => void): Promise<string> {
  if (
    await stat(file).then(
      () => true,
      () => false,
    )
  )
    return file;
  await mkdir(join(file, '..'), { recursive: true });
  progress?.(`making the microVM disk of image ${image.name} (${image.digest.slice(0, 19)})`);
  const tmp = await mkdtemp(`${file}.tmp-`);
  // The image's tree as a sandbox sees it: its layers merged, whiteouts applied.
  const rootfs = join(tmp, 'rootfs');
  try {
    await mountOverlay(image.layers, rootfs);
    const maps = { owner: join(tmp, 'owner.map'), group: join(tmp, 'group.map') };
    for (const [kind, fmt] of [
      ['owner', '%U'],
      ['group', '%G'],
    ] as const) {
      const ids = new Set((await run('find', [rootfs, '-printf', `${fmt}\n`])).stdout.split('\n').filter(Boolean).map(Number));
      // Ids outside the range were never the guest's: they become nobody.
      const lines = [...ids].map((id) => `+${id} +${id >= USERNS_HOST_BASE && id < USERNS_HOST_BASE + USERNS_SIZE ? id - USERNS_HOST_BASE : 65534}`);
      await writeFile(maps[kind], `${lines.join('\n')}\n`);
    }
    const tree = join(tmp, 'tree');
    await mkdir(tree);
    await run('sh', [
      '-c',
      'tar --owner-map="$2" --group-map="$3" --numeric-owner --xattrs --acls -C "$1" -c . | tar -x --numeric-owner -p --xattrs --acls -C "$4"',
      'sh',
      rootfs,
      maps.owner,
      maps.group,
      tree,
    ]);
    const used = Number((await run('du', ['-sb', tree])).stdout.split('\t')[0]);
    // Room for ext4's own metadata; the disk is read-only, so no more than that.
    const size = Math.ceil((used * 1.15 + 64 * 2 ** 20) / 2 ** 20);
    await run('mkfs.ext4', [
      '-q',
      '-F',
      '-L',
      'moat-image',
      '-d',
      tree,
      '-b',
      '4096',
      '-m',
      '0',
      '-O',
      '^has_journal',
      '-E',
      'root_owner=0:0',
      join(tmp, 'disk.ext4'),
      `${size}M`,
    ]);
    await rename(join(tmp, 'disk.ext4'), file);
    return file;
  } finally {
    await unmount(rootfs);
    await rm(tmp, { recursive: true, force: true });
  }
}
