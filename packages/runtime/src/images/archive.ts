import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, realpath, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { MoatError } from '@moat/core';
import { entryParts, ingestLayer } from './layer.js';
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, parseConfig, parseManifest, pickPlatform, verified } from './parse.js';
import { sha256, sha256File } from './image.js';
import { MEDIA, isDigest, type Descriptor, type ImageSource, type Manifest } from './oci.js';

export interface ImageArchive {
  images: ImageSource[];
  close(): Promise<void>;
}

const bad = (msg: string) => new MoatError(422, 'BadArchive', msg);
// An archive holds whole images; this bounds what a small gzip may expand to.
const ARCHIVE_LIMITS = { maxBytes: 64 * 2 ** 30, maxEntries: 1_000_000 };

/**
 * The images of a `docker save` archive or an OCI image layout (a directory,
 * or a tar of one; gzip or not). A tar is unpacked next to it with the layer
 * unpacker's checks, then read like a directory.
 */
export async function openArchive(path: string): Promise<ImageArchive> {
  if ((await stat(path)).isDirectory()) return { images: await readLayout(path), close: async () => {} };
  const dir = join(dirname(path), `.${randomUUID()}.unpacked`);
  const close = () => rm(dir, { recursive: true, force: true });
  try {
    await ingestLayer(createReadStream(path), {
      mediaType: (await isGzip(path)) ? MEDIA.ociLayerGzip : MEDIA.ociLayer,
      dest: dir,
      limits: ARCHIVE_LIMITS,
      policy: { devices: false, setuid: false },
    }).catch((err: unknown) => {
      if (err instanceof MoatError && err.reason === 'UnsafeLayer') throw bad(`the archive is refused: ${err.message}`);
      if (err instanceof Error && !(err instanceof MoatError)) throw bad(`the file is not a tar archive (docker save or OCI layout): ${err.message}`);
      throw err;
    });
    return { images: await readLayout(dir), close };
  } catch (err) {
    await close();
    throw err;
  }
}

async function readLayout(dir: string): Promise<ImageSource[]> {
  const docker = await readFile(join(dir, 'manifest.json'), 'utf8').catch(() => undefined);
  if (docker !== undefined) return dockerSave(dir, docker);
  const index = await readFile(join(dir, 'index.json')).catch(() => undefined);
  if (index) return ociLayout(dir, index);
  throw bad('the archive is neither a `docker save` archive (manifest.json) nor an OCI layout (index.json)');
}

/** `docker save`: manifest.json lists each image's config file, tags and layer tars. */
async function dockerSave(dir: string, text: string): Promise<ImageSource[]> {
  let entries: { Config?: unknown; RepoTags?: unknown; Layers?: unknown }[];
  try {
    entries = JSON.parse(text) as typeof entries;
    if (!Array.isArray(entries)) throw new Error('not a list');
  } catch (err) {
    throw bad(`manifest.json is not a docker save manifest: ${(err as Error).message}`);
  }
  return entries.map((e, i) => {
    if (typeof e.Config !== 'string' || !Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string'))
      throw bad(`manifest.json entry ${i} has no Config and Layers`);
    const tags = Array.isArray(e.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    const names = { config: e.Config, layers: e.Layers as string[] };
    const files = new Map<string, string>();
    let resolved: Promise<Awaited<ReturnType<ImageSource['resolve']>>> | undefined;
    const resolve = async () => {
      const configPath = await fileIn(dir, names.config);
      const configBytes = await readBounded(configPath, MAX_CONFIG_BYTES);
      const configDigest = sha256(configBytes);
      const layers: Descriptor[] = [];
      for (const l of names.layers) {
        const p = await fileIn(dir, l);
        const digest = await sha256File(p);
        files.set(digest, p);
        layers.push({ mediaType: (await isGzip(p)) ? MEDIA.ociLayerGzip : MEDIA.ociLayer, digest, size: (await stat(p)).size });
      }
      files.set(configDigest, configPath);
      const manifest: Manifest = {
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: configBytes.length },
        layers,
      };
      return {
        digest: sha256(Buffer.from(JSON.stringify(manifest))),
        manifest,
        configBytes,
        config: parseConfig(configBytes, `${tags[0] ?? e.Config} config`),
      };
    };
    return {
      name: familiar(tags[0] ?? ''),
      resolve: () => (resolved ??= resolve()),
      blob: async (desc: Descriptor) => {
        const p = files.get(desc.digest);
        if (!p) throw bad(`the archive has no blob ${desc.digest}`);
        return createReadStream(p);
      },
    };
  });
}

/** An OCI image layout: index.json names manifests, every blob is under blobs/sha256/. */
async function ociLayout(dir: string, indexBytes: Buffer): Promise<ImageSource[]> {
  const index = parseManifest(indexBytes, 'index.json', MEDIA.ociIndex);
  if (index.kind !== 'index') throw bad('index.json is not an image index');
  const blobPath = (digest: string) => {
    if (!isDigest(digest)) throw bad(`malformed digest ${digest}`);
    return fileIn(dir, `blobs/sha256/${digest.slice(7)}`);
  };
  const manifestAt = async (desc: Descriptor, where: string) =>
    parseManifest(verified(await readBounded(await blobPath(desc.digest), MAX_MANIFEST_BYTES), desc.digest, where), where, desc.mediaType);
  return index.manifests.map((top) => {
    const a = top.annotations ?? {};
    const ref = a['io.containerd.image.name'] ?? a['org.opencontainers.image.ref.name'] ?? '';
    // A bare ref name (`latest`) is a tag with no repository: the importer must give the name.
    const name = ref.includes('/') || ref.includes(':') ? familiar(ref) : '';
    return {
      name,
      resolve: async () => {
        let desc = top;
        let parsed = await manifestAt(desc, name || top.digest);
        if (parsed.kind === 'index') {
          desc = pickPlatform(parsed.manifests, name || top.digest);
          parsed = await manifestAt(desc, name || desc.digest);
        }
        if (parsed.kind !== 'manifest') throw bad(`${name || top.digest}: an index inside an index is not supported`);
        const { manifest } = parsed;
        const configBytes = verified(await readBounded(await blobPath(manifest.config.digest), MAX_CONFIG_BYTES), manifest.config.digest, 'config');
        return { digest: desc.digest, manifest, configBytes, config: parseConfig(configBytes, `${name || desc.digest} config`) };
      },
      blob: async (desc: Descriptor) => createReadStream(await blobPath(desc.digest)),
    };
  });
}

/**
 * A file the archive names: symlinks are followed (docker save links shared
 * layers) but must end at a regular file inside the archive.
 */
async function fileIn(dir: string, rel: string): Promise<string> {
  const parts = entryParts(rel);
  const root = await realpath(dir);
  const real = parts.length ? await realpath(join(dir, ...parts)).catch(() => undefined) : undefined;
  if (!real || !real.startsWith(`${root}/`) || !(await stat(real)).isFile()) throw bad(`the archive has no file ${JSON.stringify(rel)}`);
  return real;
}

async function readBounded(path: string, max: number): Promise<Buffer> {
  if ((await stat(path)).size > max) throw bad(`${path.split('/').pop()} is larger than ${max} bytes`);
  return readFile(path);
}

/** `docker.io/library/python:3` as Docker shows it, `python:3` (skopeo writes the long form). */
const familiar = (name: string) => name.replace(/^docker\.io\//, '').replace(/^library\//, '');

export async function isGzip(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    await fh.read(b, 0, 2, 0);
    return b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}
