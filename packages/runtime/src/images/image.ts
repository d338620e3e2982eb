import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { MEDIA, type ImageConfig, type Manifest, type RunConfig } from './oci.js';

/** An image in the store, as sandboxes and the server see it. */
export interface Image {
  /** The platform manifest's digest: what a sandbox records, and starts from again on every restart. */
  digest: string;
  /** Where it came from: the reference pulled, the archive's or the build's tag, or the catalog's name. */
  name: string;
  /** The config's digest (Docker's image ID). */
  configDigest: string;
  /** What the image says a container runs with: ENTRYPOINT, CMD, ENV, WORKDIR, USER, exposed ports. */
  config: RunConfig;
  /** The layers' read-only trees, lowest first; ids are shifted into the sandbox user-namespace range. */
  layers: string[];
  /** The layers' unpacked size. */
  sizeBytes: number;
  createdAt: string;
}

/** What the store keeps of an image (`manifests/<hex>.json`). */
export interface ImageRecord {
  digest: string;
  name: string;
  manifest: Manifest;
  config: ImageConfig;
  configDigest: string;
  /** The local layer each of the config's diff ids is stored as (equal, or an alias: see `exportLayout`). */
  layers: string[];
  sizeBytes: number;
  createdAt: string;
}

export type Progress = (line: string) => void;

export function sha256(data: string | Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A file's digest, `sha256:<hex>`. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(`sha256:${h.digest('hex')}`))
      .on('error', reject);
  });
}

/** The manifest and config of an image made here (the catalog's, an export), with their digests. */
export function describeImage(config: ImageConfig, layers: { mediaType: string; digest: string; size: number }[]) {
  const configBytes = Buffer.from(JSON.stringify(config));
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.ociConfig, digest: sha256(configBytes), size: configBytes.length },
    layers,
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return { manifest, manifestBytes, digest: sha256(manifestBytes), configBytes };
}
