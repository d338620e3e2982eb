import { createWriteStream } from 'node:fs';
import { lstat, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { USERNS_HOST_BASE, USERNS_SIZE } from '../userns.js';
import { packLayer } from './layer.js';
import { MEDIA, type ImageConfig } from './oci.js';
import { describeImage } from './image.js';
import type { ImageStore } from './store.js';

/**
 * The image as an OCI layout directory (ref `latest`), for tools that take
 * one: the Dockerfile builder's `FROM`. Layers are re-tarred from their
 * trees, so their diff ids are new: each is recorded as an alias of the
 * stored layer, and an image built on top shares the base's layers instead
 * of storing them again. Made once per image and kept until it is removed.
 */
export async function exportLayout(store: ImageStore, digest: string): Promise<string> {
  const dir = join(store.dir, 'exports', digest.slice(7));
  if (await exists(join(dir, 'index.json'))) return dir;
  const record = await store.rawRecord(digest);
  const tmp = await store.tmpDir();
  try {
    await mkdir(join(tmp, 'blobs', 'sha256'), { recursive: true });
    const layers = [];
    const diffIds = [];
    for (const stored of record.layers) {
      const file = join(tmp, 'layer.tar');
      const out = createWriteStream(file);
      const { opaque } = await store.layerInfo(stored);
      const { diffId, size } = await packLayer(join(store.dir, 'layers', stored.slice(7), 'fs'), out, { mapId: unshift, ...(opaque ? { opaque } : {}) });
      await rename(file, join(tmp, 'blobs', 'sha256', diffId.slice(7)));
      await store.addAlias(diffId, stored);
      layers.push({ mediaType: MEDIA.ociLayer, digest: diffId, size });
      diffIds.push(diffId);
    }
    const config: ImageConfig = { ...record.config, rootfs: { type: 'layers', diff_ids: diffIds } };
    const d = describeImage(config, layers);
    await writeFile(join(tmp, 'blobs', 'sha256', d.manifest.config.digest.slice(7)), d.configBytes);
    await writeFile(join(tmp, 'blobs', 'sha256', d.digest.slice(7)), d.manifestBytes);
    await writeFile(join(tmp, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA.ociIndex,
      manifests: [
        { mediaType: MEDIA.ociManifest, digest: d.digest, size: d.manifestBytes.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } },
      ],
    };
    await writeFile(join(tmp, 'index.json'), JSON.stringify(index));
    await mkdir(join(dir, '..'), { recursive: true });
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
    return dir;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Store ids (the sandbox range) back to the image's own. */
const unshift = (id: number) => (id >= USERNS_HOST_BASE && id < USERNS_HOST_BASE + USERNS_SIZE ? id - USERNS_HOST_BASE : id);

async function exists(p: string) {
  return lstat(p).then(
    () => true,
    () => false,
  );
}
