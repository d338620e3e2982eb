import { createReadStream } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../run.js';
import { hostUid } from '../userns.js';
import type { ImageDefinition } from './catalog.js';
import { describeImage, sha256File, type Image, type ImageRecord, type Progress } from './image.js';
import { ingestLayer, type LayerLimits, type LayerPolicy } from './layer.js';
import { MEDIA, type ImageConfig } from './oci.js';

// Builds are reproducible: the same packages give the same layer, config and manifest digests.
const EPOCH = 1700000000;

/** What a catalog build needs of the image store (store.ts), which calls it. */
export interface CatalogStore {
  readonly policy: LayerPolicy;
  readonly limits: LayerLimits;
  tmpDir(): Promise<string>;
  localLayer(diffId: string): Promise<string | undefined>;
  addLayer(diffId: string, fill: (dest: string) => Promise<{ size: number; opaque?: string[] }>): Promise<string>;
  addImage(r: Omit<ImageRecord, 'sizeBytes' | 'createdAt'>, configBytes: Buffer): Promise<Image>;
}

/** A catalog image: one layer made by mmdebstrap, stored like any pulled image. */
export async function buildCatalogLayer(def: ImageDefinition, store: CatalogStore, progress: Progress): Promise<Image> {
  const tmp = await store.tmpDir();
  try {
    const tar = join(tmp, 'rootfs.tar');
    progress(`building image "${def.name}": debian ${def.suite} + ${def.packages.join(', ')} (mmdebstrap, about a minute)`);
    const started = Date.now();
    await run(
      'mmdebstrap',
      [
        '--variant=minbase',
        `--include=${def.packages.join(',')}`,
        // /dev is the sandbox's own tmpfs: device nodes in the layer would only be refused by the layer policy.
        '--skip=output/dev',
        // An unprivileged user for agents that should not run as root, as E2B images have.
        '--customize-hook=chroot "$1" sh -c "echo user:x:1000:1000::/home/user:/bin/bash >>/etc/passwd; echo user:x:1000: >>/etc/group; echo user:*:19000:0:99999:7::: >>/etc/shadow; mkdir -p /home/user /data; chown 1000:1000 /home/user"',
        '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
        def.suite,
        tar,
      ],
      { env: { ...process.env, SOURCE_DATE_EPOCH: String(EPOCH) }, onStderrLine: (l) => progress(`  ${l}`) },
    );
    progress(`  mmdebstrap done in ${((Date.now() - started) / 1000).toFixed(1)} s; unpacking`);
    const diffId = await sha256File(tar);
    const size = (await stat(tar)).size;
    if (!(await store.localLayer(diffId))) {
      await store.addLayer(diffId, async (dest) => {
        await mkdir(join(dest, '..'), { recursive: true });
        return ingestLayer(createReadStream(tar), {
          mediaType: MEDIA.ociLayer,
          digest: diffId,
          size,
          diffId,
          dest,
          mapId: hostUid,
          policy: store.policy,
          limits: store.limits,
        });
      });
    }
    const config: ImageConfig = {
      architecture: 'amd64',
      os: 'linux',
      created: new Date(EPOCH * 1000).toISOString(),
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created: new Date(EPOCH * 1000).toISOString(), created_by: `mmdebstrap --variant=minbase ${def.suite} + ${def.packages.join(',')}` }],
    };
    const d = describeImage(config, [{ mediaType: MEDIA.ociLayer, digest: diffId, size }]);
    const image = await store.addImage(
      { digest: d.digest, name: def.name, manifest: d.manifest, config, configDigest: d.manifest.config.digest, layers: [diffId] },
      d.configBytes,
    );
    progress(`image "${def.name}" ready: ${image.digest}`);
    return image;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
