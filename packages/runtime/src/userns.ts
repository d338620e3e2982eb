/**
 * Every sandbox runs in a user namespace of its own id range: root inside is
 * an unprivileged uid outside, different for every sandbox, so per-uid kernel
 * limits (keyrings, inotify instances, RLIMIT_NPROC) and file ownership are
 * per sandbox.
 *
 * Files on disk (image layers, writable layers, volumes) keep one canonical
 * range, USERNS_HOST_BASE.., that no sandbox ever runs as: each sandbox sees
 * them through idmapped mounts (moat-idmap) shifted into its own range, so
 * images are shared without a chown per sandbox and a disk moves between
 * sandboxes (backups, volumes) as it is. 2^24 keeps clear of the ranges
 * Debian hands out in /etc/subuid (100000 upwards); sandbox ranges follow it
 * up to 2^31, where the image builder's range starts.
 */
export const USERNS_HOST_BASE = 1 << 24;
export const USERNS_SIZE = 65536;
/** Slot 0 is the canonical range; sandboxes get slots 1..MAX_ID_SLOT. */
export const MAX_ID_SLOT = (2 ** 31 - USERNS_HOST_BASE) / USERNS_SIZE - 1;

/** The canonical (on-disk) host id of a container id. */
export const hostUid = (containerUid: number) => USERNS_HOST_BASE + containerUid;

/** The host ids a sandbox runs as: container id n is host id `hostId + n`. */
export interface IdRange {
  hostId: number;
  size: number;
}

export function idRangeOfSlot(slot: number): IdRange {
  if (!Number.isInteger(slot) || slot < 1 || slot > MAX_ID_SLOT) throw new Error(`id range slot ${slot} is outside 1..${MAX_ID_SLOT}`);
  return { hostId: USERNS_HOST_BASE + slot * USERNS_SIZE, size: USERNS_SIZE };
}

/** The lowest slot not in use; undefined when every one is taken. */
export function freeIdSlot(inUse: Iterable<number>): number | undefined {
  const taken = new Set(inUse);
  for (let slot = 1; slot <= MAX_ID_SLOT; slot++) if (!taken.has(slot)) return slot;
  return undefined;
}
