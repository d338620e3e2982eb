import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { MoatError } from '@moat/core';
import { MEDIA, isDigest, type Descriptor, type ImageConfig, type Manifest } from './oci.js';

/** Manifests and configs are small; a bigger one is not one. */
export const MAX_MANIFEST_BYTES = 4 * 2 ** 20;
export const MAX_CONFIG_BYTES = 8 * 2 ** 20;

const bad = (where: string, why: string) => new MoatError(502, 'BadManifest', `${where}: ${why}`);

export type ParsedManifest = { kind: 'index'; manifests: Descriptor[] } | { kind: 'manifest'; manifest: Manifest };

/** An index (manifest list) or a platform manifest, every field checked before it is used. */
export function parseManifest(bytes: Buffer, where: string, headerType?: string): ParsedManifest {
  const m = parseJson(bytes, where) as Record<string, unknown>;
  const type = (typeof m.mediaType === 'string' ? m.mediaType : undefined) ?? headerType?.split(';')[0]?.trim();
  if (m.schemaVersion !== 2)
    throw new MoatError(422, 'UnsupportedManifest', `${where}: only schema 2 manifests are supported (Docker's schema 1 is long deprecated)`);
  if (type === MEDIA.ociIndex || type === MEDIA.dockerList || (type === undefined && Array.isArray(m.manifests))) {
    if (!Array.isArray(m.manifests)) throw bad(where, 'the index has no manifests');
    return { kind: 'index', manifests: m.manifests.map((d, i) => descriptor(d, `${where} manifests[${i}]`)) };
  }
  if (!Array.isArray(m.layers)) throw bad(where, 'the manifest has no layers');
  const manifest: Manifest = {
    schemaVersion: 2,
    ...(type ? { mediaType: type } : {}),
    config: descriptor(m.config, `${where} config`),
    layers: m.layers.map((d, i) => descriptor(d, `${where} layers[${i}]`)),
  };
  return { kind: 'manifest', manifest };
}

/** linux/amd64 from an index, as `docker pull` on this host would pick it. */
export function pickPlatform(manifests: Descriptor[], where: string): Descriptor {
  const amd64 = manifests.filter((d) => d.platform?.os === 'linux' && d.platform.architecture === 'amd64');
  const pick = amd64.find((d) => !d.platform?.variant) ?? amd64[0];
  if (pick) return pick;
  const have = manifests.map((d) => (d.platform ? `${d.platform.os}/${d.platform.architecture}` : 'unknown')).join(', ');
  throw new MoatError(422, 'PlatformNotSupported', `${where} has no linux/amd64 image (it has: ${have || 'none'})`);
}

export function parseConfig(bytes: Buffer, where: string): ImageConfig {
  const c = parseJson(bytes, where) as Record<string, unknown>;
  const rootfs = c.rootfs as { type?: unknown; diff_ids?: unknown } | undefined;
  if (!rootfs || !Array.isArray(rootfs.diff_ids) || !rootfs.diff_ids.every(isDigest)) throw bad(where, 'the config has no valid rootfs.diff_ids');
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string') throw bad(where, 'the config names no os and architecture');
  const run = (c.config ?? {}) as Record<string, unknown>;
  const strings = (v: unknown, name: string) => {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw bad(where, `config.${name} is not a list of strings`);
    return v as string[];
  };
  const str = (v: unknown, name: string) => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw bad(where, `config.${name} is not a string`);
    return v;
  };
  const entrypoint = strings(run.Entrypoint, 'Entrypoint');
  const cmd = strings(run.Cmd, 'Cmd');
  const env = strings(run.Env, 'Env');
  const workdir = str(run.WorkingDir, 'WorkingDir');
  const user = str(run.User, 'User');
  const ports = run.ExposedPorts && typeof run.ExposedPorts === 'object' ? (run.ExposedPorts as Record<string, object>) : undefined;
  const labels = run.Labels && typeof run.Labels === 'object' ? (run.Labels as Record<string, string>) : undefined;
  return {
    ...(c as object),
    os: c.os,
    architecture: c.architecture,
    rootfs: { type: 'layers', diff_ids: rootfs.diff_ids as string[] },
    config: {
      ...(entrypoint ? { Entrypoint: entrypoint } : {}),
      ...(cmd ? { Cmd: cmd } : {}),
      ...(env ? { Env: env } : {}),
      ...(workdir ? { WorkingDir: workdir } : {}),
      ...(user ? { User: user } : {}),
      ...(ports ? { ExposedPorts: ports } : {}),
      ...(labels ? { Labels: labels } : {}),
    },
  } as ImageConfig;
}

function descriptor(d: unknown, where: string): Descriptor {
  const o = d as Record<string, unknown> | null;
  if (!o || typeof o !== 'object') throw bad(where, 'not a descriptor');
  if (!isDigest(o.digest)) throw bad(where, `unsupported or malformed digest ${JSON.stringify(o.digest)} (sha256 is supported)`);
  if (!Number.isSafeInteger(o.size) || (o.size as number) < 0) throw bad(where, `malformed size ${JSON.stringify(o.size)}`);
  if (typeof o.mediaType !== 'string') throw bad(where, 'no media type');
  const p = o.platform as Record<string, unknown> | undefined;
  return {
    mediaType: o.mediaType,
    digest: o.digest,
    size: o.size as number,
    ...(p && typeof p.os === 'string' && typeof p.architecture === 'string'
      ? { platform: { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' ? { variant: p.variant } : {}) } }
      : {}),
    ...(o.annotations && typeof o.annotations === 'object' ? { annotations: o.annotations as Record<string, string> } : {}),
  };
}

function parseJson(bytes: Buffer, where: string): unknown {
  try {
    const v = JSON.parse(bytes.toString('utf8')) as unknown;
    if (v && typeof v === 'object') return v;
  } catch {
    // reported below
  }
  throw bad(where, 'not a JSON object');
}

/** A stream's bytes, at most `max` of them (a registry or archive may send anything). */
export async function readLimited(s: Readable, max: number, where: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of s as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      s.destroy();
      throw bad(where, `larger than ${max} bytes`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** Bytes whose digest must be `digest`. */
export function verified(bytes: Buffer, digest: string, where: string): Buffer {
  const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (got !== digest) throw new MoatError(502, 'DigestMismatch', `${where}: the bytes have the digest ${got}, not ${digest}`);
  return bytes;
}
