// The benchmark's image: the `base` image's tree (about 300 MB) cut into four gzip'd layers, as an OCI layout.
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageStore, MEDIA, run, sha256, sha256File } from '@moat/runtime';
import { sharedImagesDir } from '../test/helpers/server.js';

const CUTS = [['usr/lib'], ['usr/share'], ['usr/bin', 'usr/sbin', 'usr/libexec', 'usr/include', 'usr/local', 'usr/games', 'usr/src']];

export async function layeredImageFrom(dir: string) {
  const base = await new ImageStore(sharedImagesDir()).ensureCatalog('base');
  const root = base.layers[0]!;
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const layers = [];
  const diffIds = [];
  let bytes = 0;
  const taken = CUTS.flat();
  const all = [...CUTS, ['.', ...taken.map((p) => `--exclude=./${p}`)]];
  for (const [i, paths] of all.entries()) {
    const tar = join(dir, `layer-${i}.tar`);
    const rest = paths[0] === '.';
    await run('tar', ['-C', root, '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '-cf', tar, ...(rest ? [...paths.slice(1), '.'] : paths)]);
    bytes += (await stat(tar)).size;
    diffIds.push(await sha256File(tar));
    await run('gzip', ['-6', '-n', tar]);
    const digest = await sha256File(`${tar}.gz`);
    const size = (await stat(`${tar}.gz`)).size;
    await rename(`${tar}.gz`, join(blobs, digest.slice(7)));
    layers.push({ mediaType: MEDIA.ociLayerGzip, digest, size });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const configDigest = sha256(config);
  await writeFile(join(blobs, configDigest.slice(7)), config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: config.length },
      layers,
    }),
  );
  const manifestDigest = sha256(manifest);
  await writeFile(join(blobs, manifestDigest.slice(7)), manifest);
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        { mediaType: MEDIA.ociManifest, digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } },
      ],
    }),
  );
  return { dir, layers: layers.length, bytes, compressedBytes: layers.reduce((n, l) => n + l.size, 0) };
}
