import { chmod, mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

/** moat-init as built by `make -C packages/agent`; MOAT_INIT_BINARY overrides (packaged installs). */
export function defaultInitBinary(): string {
  return process.env.MOAT_INIT_BINARY ?? fileURLToPath(new URL('../../agent/build/moat-init', import.meta.url));
}

/** The host-side helper that renames sandboxes (packages/agent/moat-hostname.c). */
export function defaultHostnameHelper(): string {
  return process.env.MOAT_HOSTNAME_BINARY ?? fileURLToPath(new URL('../../agent/build/moat-hostname', import.meta.url));
}

/** The host-side helper that makes idmapped mounts (packages/agent/moat-idmap.c). */
export function defaultIdmapHelper(): string {
  return process.env.MOAT_IDMAP_BINARY ?? fileURLToPath(new URL('../../agent/build/moat-idmap', import.meta.url));
}

/** Makes the directory (and its parents) and gives it `mode` even when it existed (the umask, older installs). */
export async function ensureDir(dir: string, mode: number): Promise<void> {
  await mkdir(dir, { recursive: true, mode });
  await chmod(dir, mode);
}
