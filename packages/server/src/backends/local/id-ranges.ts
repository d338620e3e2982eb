import { MAX_ID_SLOT, freeIdSlot, idRangeOfSlot, type IdRange } from '@moat/runtime';
import { MoatError } from '@moat/core';
import type { Store } from '../../store/store.js';

/**
 * Each sandbox's own host id range (runtime userns.ts), recorded in the
 * store from its first start until it is deleted, so a restart, a hibernate
 * or a crash of the server never gives its ids to another sandbox.
 */
export class IdRanges {
  constructor(private readonly store: Store) {}

  async forSandbox(uid: string): Promise<IdRange> {
    for (;;) {
      const rows = await this.store.idRanges();
      const own = rows.find((r) => r.sandbox_uid === uid);
      if (own) return idRangeOfSlot(Number(own.slot));
      const slot = freeIdSlot(rows.map((r) => Number(r.slot)));
      if (slot === undefined) throw new MoatError(507, 'InsufficientStorage', `every one of the host's ${MAX_ID_SLOT} sandbox id ranges is in use`);
      // Another sandbox may take the same slot at the same moment: then look again.
      if (await this.store.insertIdRange(slot, uid)) return idRangeOfSlot(slot);
    }
  }

  release(uid: string): Promise<void> {
    return this.store.releaseIdRange(uid);
  }

  /** After a restart: free the ranges of sandboxes no record points to. */
  async cleanup(knownUids: Iterable<string>): Promise<void> {
    const known = new Set(knownUids);
    for (const r of await this.store.idRanges()) if (!known.has(r.sandbox_uid)) await this.release(r.sandbox_uid);
  }
}
