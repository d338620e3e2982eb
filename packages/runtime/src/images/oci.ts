import type { Readable } from 'node:stream';

/**
 * The parts of the OCI image spec (and Docker's schema 2, its ancestor) that
 * Moat reads. Everything here arrives from a registry or an archive, so it is
 * validated where it is parsed (`parse.ts`) before
 * any field is trusted.
 */
export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export interface Descriptor {
  mediaType: string;
  /** `sha256:<64 hex>`: checked by `isDigest` wherever one is parsed. */
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
  annotations?: Record<string, string>;
}

/** One platform's image: a config and its layers, lowest first. */
export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** What the image config says a container runs with (Docker's and OCI's `config` object). */
export interface RunConfig {
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Env?: string[] | null;
  WorkingDir?: string;
  User?: string;
  ExposedPorts?: Record<string, object> | null;
  Labels?: Record<string, string> | null;
  StopSignal?: string;
}

export interface ImageConfig {
  architecture: string;
  os: string;
  created?: string;
  config?: RunConfig;
  /** The uncompressed digests of the layers, in the manifest's order. */
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: { created?: string; created_by?: string; empty_layer?: boolean; comment?: string }[];
}

/** A platform manifest found in a source, with its config already fetched and checked against its digest. */
export interface ResolvedImage {
  /** The digest of the platform manifest's bytes (what `repo@sha256:...` pins). */
  digest: string;
  manifest: Manifest;
  /** The config's bytes as stored (its digest is `manifest.config.digest`) and the parsed form. */
  configBytes: Buffer;
  config: ImageConfig;
}

/** Where an image's blobs come from: a registry, a `docker save` archive or an OCI layout. */
export interface ImageSource {
  /** How the image is named where it came from (`registry/repo:tag`, or the archive's tag). */
  readonly name: string;
  resolve(): Promise<ResolvedImage>;
  /** The blob's bytes as stored; the caller verifies `desc.digest` and `desc.size` while reading. */
  blob(desc: Descriptor, signal?: AbortSignal): Promise<Readable>;
}

export const isDigest = (s: unknown): s is string => typeof s === 'string' && /^sha256:[0-9a-f]{64}$/.test(s);
