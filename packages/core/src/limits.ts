import { invalid } from './errors.js';
import { parseBytes, parseMillicores } from './quantity.js';
import type { SandboxSpec } from './sandbox.js';

export interface SandboxLimits {
  cpuMillicores: number;
  memoryBytes: number;
  pids: number;
  /** Size of the writable layer over the image. */
  diskBytes: number;
  /** Size of the persistent volume at /data. */
  dataBytes: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  cpuMillicores: 1000,
  memoryBytes: 512 * 2 ** 20,
  pids: 512,
  diskBytes: 2 * 2 ** 30,
  dataBytes: 1 * 2 ** 30,
};

const MiB = 2 ** 20;

function within(value: number, min: number, max: number, field: string, shown: string): number {
  if (!Number.isFinite(value) || value < min || value > max) {
    throw invalid(`${field}: ${shown} is outside the allowed range`, { field, min, max });
  }
  return value;
}

/** Effective limits of a sandbox spec: limits over requests over defaults, validated. */
export function resolveLimits(spec: SandboxSpec): SandboxLimits {
  const c = spec.podTemplate.spec.containers[0]!;
  const l = { ...c.resources?.requests, ...c.resources?.limits };
  const f = 'spec.podTemplate.spec.containers[0].resources.limits';
  const limits = { ...DEFAULT_LIMITS };
  if (l.cpu !== undefined) limits.cpuMillicores = within(parseMillicores(l.cpu, `${f}.cpu`), 10, 64_000, `${f}.cpu`, String(l.cpu));
  if (l.memory !== undefined) limits.memoryBytes = within(parseBytes(l.memory, `${f}.memory`), 16 * MiB, 2 ** 40, `${f}.memory`, String(l.memory));
  if (l['moat.dev/pids'] !== undefined) limits.pids = within(Number(l['moat.dev/pids']), 8, 1 << 20, `${f}.moat.dev/pids`, String(l['moat.dev/pids']));
  if (l['ephemeral-storage'] !== undefined)
    limits.diskBytes = within(
      parseBytes(l['ephemeral-storage'], `${f}.ephemeral-storage`),
      16 * MiB,
      2 ** 44,
      `${f}.ephemeral-storage`,
      String(l['ephemeral-storage']),
    );
  const vct = spec.volumeClaimTemplates?.[0];
  if (vct) {
    const field = 'spec.volumeClaimTemplates[0].spec.resources.requests.storage';
    limits.dataBytes = within(parseBytes(vct.spec.resources.requests.storage, field), 16 * MiB, 2 ** 44, field, String(vct.spec.resources.requests.storage));
  }
  return limits;
}
