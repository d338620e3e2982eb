import { readFile, writeFile } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { MAX_ID_SLOT } from './userns.js';

/**
 * Per-uid kernel limits are per sandbox now that each runs as its own ids
 * (userns.ts), but some are counted against the owner of the sandbox's user
 * namespace, root, for all sandboxes together: inotify instances and
 * watches, and user namespaces. So each sandbox's namespace gets limits of its
 * own (set before it runs: moat-idmap userns-limits) and the host's are sized
 * so that as many sandboxes as the host has memory for fit. docs/density.md.
 */
export const SANDBOX_USERNS_LIMITS = { max_inotify_instances: 128, max_inotify_watches: 65536 } as const;

/** About what an idle sandbox costs the host: how many the host limits are sized for. */
const IDLE_SANDBOX_BYTES = 1.5 * 2 ** 20;
/** About the kernel memory one inotify watch pins. */
const WATCH_BYTES = 1024;

export interface HostLimitChange {
  sysctl: string;
  from: number;
  to: number;
}

/** The host sysctls (as /proc/sys paths) and the least each must be, for `sandboxes` sandboxes. */
export function hostLimits(memoryBytes = totalmem()): { sandboxes: number; sysctls: Record<string, number> } {
  const n = Math.min(MAX_ID_SLOT, Math.floor(memoryBytes / IDLE_SANDBOX_BYTES));
  return {
    sandboxes: n,
    sysctls: {
      'fs/inotify/max_user_instances': SANDBOX_USERNS_LIMITS.max_inotify_instances * n + 1024,
      // All sandboxes' watches together may pin a twentieth of the memory.
      'fs/inotify/max_user_watches': Math.min(SANDBOX_USERNS_LIMITS.max_inotify_watches * n, Math.floor(memoryBytes / 20 / WATCH_BYTES)),
      // A sandbox's runc namespace and its idmapped mounts' one, with room for the host's own.
      'user/max_user_namespaces': 2 * n + 1024,
      // The default (32768 on small machines) is less than a few hundred busy sandboxes.
      'kernel/pid_max': 4194304,
      // Every sandbox's veth has a neighbour entry on the host.
      'net/ipv4/neigh/default/gc_thresh2': 2 * n,
      'net/ipv4/neigh/default/gc_thresh3': 4 * n,
    },
  };
}

/** Raises each host limit that is below its size (never lowers one an operator set higher); returns what changed. */
export async function applyHostLimits(memoryBytes?: number): Promise<HostLimitChange[]> {
  const changes: HostLimitChange[] = [];
  for (const [sysctl, least] of Object.entries(hostLimits(memoryBytes).sysctls)) {
    const path = `/proc/sys/${sysctl}`;
    const from = Number((await readFile(path, 'utf8')).trim());
    if (from >= least) continue;
    await writeFile(path, String(least));
    changes.push({ sysctl: sysctl.replaceAll('/', '.'), from, to: least });
  }
  return changes;
}
