import { MoatError, formatBytes, parseBytes, parseMillicores, resolveLimits, type SandboxSpec } from '@moat/core';
import { isLive, type Store } from '../store/store.js';
import type { Identity } from './identity.js';
import type { Quota } from './types.js';

/** Rejects quantities that do not parse (422), so a stored quota always does. */
export function checkQuota(q: Quota, field = 'quota'): Quota {
  if (q.cpu !== undefined) parseMillicores(q.cpu, `${field}.cpu`);
  if (q.memory !== undefined) parseBytes(q.memory, `${field}.memory`);
  if (q.storage !== undefined) parseBytes(q.storage, `${field}.storage`);
  return q;
}

interface Usage {
  sandboxes: number;
  cpuMillicores: number;
  memoryBytes: number;
  storageBytes: number;
}

/**
 * A sandbox's own storage: its writable layer, and its /data unless that is a
 * named volume (a volumeClaimTemplate's or a claimed one), which counts as a
 * volume instead (volumeBytes) for as long as it exists.
 */
function usageOf(spec: SandboxSpec): Usage {
  const l = resolveLimits(spec);
  const ownData = spec.volumeClaimTemplates?.length || spec.podTemplate.spec.volumes?.length ? 0 : l.dataBytes;
  return { sandboxes: 1, cpuMillicores: l.cpuMillicores, memoryBytes: l.memoryBytes, storageBytes: l.diskBytes + ownData };
}

/** What a new sandbox adds: a volumeClaimTemplate makes a volume (taking back a retained one is counted again, to be safe). */
function wantOf(spec: SandboxSpec): Usage {
  const u = usageOf(spec);
  if (spec.volumeClaimTemplates?.length && !spec.podTemplate.spec.volumes?.length) u.storageBytes += resolveLimits(spec).dataBytes;
  return u;
}

const cores = (m: number) => String(m / 1000);

/**
 * Admission of new sandboxes against the owner's user and agent quotas. The
 * check and the insert run under one lock per user (the store's, which holds
 * across servers sharing a database), so two creates cannot both take the
 * last slot; a refused sandbox is never stored.
 */
export class Quotas {
  constructor(
    private readonly store: Store,
    private readonly identity: Identity,
  ) {}

  admit<T>(namespace: string, spec: SandboxSpec, insert: () => Promise<T>): Promise<T> {
    return this.check(namespace, wantOf(spec), 'this sandbox', insert);
  }

  /** A named volume (created or restored), or an image, against the owner's storage quota. */
  admitStorage<T>(namespace: string, bytes: number, what: string, insert: () => Promise<T>): Promise<T> {
    return this.check(namespace, { ...zero(), storageBytes: bytes }, what, insert);
  }

  private async check<T>(namespace: string, want: Usage, what: string, insert: () => Promise<T>): Promise<T> {
    const owner = await this.identity.owner(namespace);
    if (!owner) return insert(); // only a namespace from before users existed has no owner, and no quota
    return this.store.exclusive(`moat.quota.${owner.user}`, async () => {
      const user = await this.identity.getUser(owner.user);
      const agents = await this.identity.listAgents(owner.user);
      const running = (await this.store.listSandboxes()).filter((s) => isLive(s.desired));
      const volumes = await this.store.db.selectFrom('volumes').select(['namespace', 'size_bytes']).execute();
      // An image counts once per namespace however many names it has there.
      const images = await this.store.db.selectFrom('images').select(['namespace', 'digest', 'size_bytes']).distinct().execute();
      const usage = (namespaces: string[]) => {
        const u = running
          .filter((s) => namespaces.includes(s.sandbox.metadata.namespace))
          .map((s) => usageOf(s.sandbox.spec))
          .reduce(add, zero());
        u.storageBytes += volumes.filter((v) => namespaces.includes(v.namespace)).reduce((n, v) => n + v.size_bytes, 0);
        u.storageBytes += images.filter((i) => namespaces.includes(i.namespace)).reduce((n, i) => n + Number(i.size_bytes), 0);
        return u;
      };
      const agent = agents.find((a) => a.name === owner.agent);
      exceeds(`user "${owner.user}"`, user.quota, usage(agents.map((a) => a.namespace)), want, what);
      exceeds(`agent "${owner.agent}" of user "${owner.user}"`, agent?.quota ?? {}, usage([namespace]), want, what);
      return insert();
    });
  }
}

const zero = (): Usage => ({ sandboxes: 0, cpuMillicores: 0, memoryBytes: 0, storageBytes: 0 });
const add = (a: Usage, b: Usage): Usage => ({
  sandboxes: a.sandboxes + b.sandboxes,
  cpuMillicores: a.cpuMillicores + b.cpuMillicores,
  memoryBytes: a.memoryBytes + b.memoryBytes,
  storageBytes: a.storageBytes + b.storageBytes,
});

function exceeds(who: string, q: Quota, used: Usage, want: Usage, subject: string): void {
  const checks: [string, number | undefined, number, number, (n: number) => string][] = [
    ['sandboxes', q.sandboxes, used.sandboxes, want.sandboxes, String],
    ['cpu', q.cpu === undefined ? undefined : parseMillicores(q.cpu, 'cpu'), used.cpuMillicores, want.cpuMillicores, cores],
    ['memory', q.memory === undefined ? undefined : parseBytes(q.memory, 'memory'), used.memoryBytes, want.memoryBytes, formatBytes],
    ['storage', q.storage === undefined ? undefined : parseBytes(q.storage, 'storage'), used.storageBytes, want.storageBytes, formatBytes],
  ];
  for (const [what, limit, inUse, asked, show] of checks) {
    if (limit !== undefined && inUse + asked > limit) {
      throw new MoatError(
        403,
        'QuotaExceeded',
        `quota exceeded for ${who}: ${what} limit ${show(limit)}, ${show(inUse)} in use, ${subject} needs ${show(asked)}; delete a sandbox${subject.startsWith('volume') ? ' or volume' : subject.startsWith('image') ? ' or image' : ''} or ask an admin to raise the quota`,
        { quota: what, limit: show(limit), used: show(inUse), requested: show(asked) },
      );
    }
  }
}
