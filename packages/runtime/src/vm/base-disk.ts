import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Image } from '../images/image.js';
import { mountOverlay, unmount } from '../disk.js';
import { run } from '../run.js';
import { USERNS_HOST_BASE } from '../userns.js';

const building = new Map<string, Promise<string>>();

/**
 * The image as a read-only ext4 disk shared by every microVM that runs it,
 * made once per image digest from its layers. Files keep the ownership the
 * image store gives them (the container user-namespace range, 2^24 + N), as
 * in a runc sandbox's rootfs: inside the guest the sandbox runs in a user
 * namespace with the same mapping, so root inside is 2^24 in the guest too.
 */
export function ensureBaseDisk(cacheDir: string, image: Image, progress?: (l: string) => void): Promise<string> {
  const hex = image.digest.replace(/^sha256:/, '');
  const file = join(cacheDir, 'images', 'userns', `${hex}.ext4`);
  let p = building.get(file);
  if (!p) {
    // Earlier releases shifted ownership back to 0 + N and kept that disk one folder up: never used again.
    p = build(file, image, progress, join(cacheDir, 'images', `${hex}.ext4`)).finally(() => building.delete(file));
    building.set(file, p);
  }
  return p;
}

async function build(file: string, image: Image, progress: ((l: string) => void) | undefined, legacy: string): Promise<string> {
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
    const used = Number((await run('du', ['-sb', rootfs])).stdout.split('\t')[0]);
    // Room for ext4's own metadata; the disk is read-only, so no more than that.
    const size = Math.ceil((used * 1.15 + 64 * 2 ** 20) / 2 ** 20);
    await run('mkfs.ext4', [
      '-q',
      '-F',
      '-L',
      'moat-image',
      '-d',
      rootfs,
      '-b',
      '4096',
      '-m',
      '0',
      '-O',
      '^has_journal',
      '-E',
      `root_owner=${USERNS_HOST_BASE}:${USERNS_HOST_BASE}`,
      join(tmp, 'disk.ext4'),
      `${size}M`,
    ]);
    await rename(join(tmp, 'disk.ext4'), file);
    await rm(legacy, { force: true });
    return file;
  } finally {
    await unmount(rootfs);
    await rm(tmp, { recursive: true, force: true });
  }
}
