import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Store } from '../store/store.js';
import type { AuditEventTable } from '../store/schema.js';
import type { CheckpointSigner } from './signing.js';

/** Who did it: a key's user (and agent), or a sandbox's owner for what the sandbox did; `source` is the address. */
export interface Actor {
  user?: string | undefined;
  agent?: string | undefined;
  keyId?: string | undefined;
  source: string;
}

export interface AuditInput {
  actor: Actor;
  /** `POST sandboxes/{name}/exec`, `egress`, `secrets.read`, ... */
  action: string;
  namespace?: string | undefined;
  sandbox?: string | undefined;
  /** What was acted on, concretely: `sandboxes/box/exec`, `GET example.com:80/path`. */
  object?: string | undefined;
  /** `success`, `denied` or `failed`. */
  result: 'success' | 'denied' | 'failed';
  detail?: Record<string, unknown>;
}

export interface AuditEvent extends Required<Omit<AuditInput, 'detail'>> {
  seq: number;
  time: string;
  detail: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

export interface AuditQuery {
  since?: string | undefined;
  until?: string | undefined;
  user?: string | undefined;
  agent?: string | undefined;
  namespace?: string | undefined;
  sandbox?: string | undefined;
  action?: string | undefined;
  /** Events after this sequence number (paging). */
  after?: number | undefined;
  limit?: number | undefined;
  /** Non-admins: only events in these namespaces or by this actor. */
  visibleTo?: { namespaces: string[]; user: string; agent?: string | undefined } | undefined;
}

export interface VerifyReport {
  ok: boolean;
  events: number;
  checkpoints: number;
  /** The first event (sequence number) where the chain does not hold. */
  brokenAt?: number;
  reason?: string;
}

const GENESIS = '0'.repeat(64);
/** The chain's last event and the last event a checkpoint signed (0: none). */
interface Head {
  seq: number;
  hash: string;
  checkpointed: number;
}
/** A signed checkpoint after this many events, or this long after an unsigned one (and when the server stops). */
const CHECKPOINT_EVERY = 100;
const CHECKPOINT_AFTER_MS = 60_000;

/** The hash covers every stored column in a fixed order, detail as its stored text. */
export function eventHash(r: Omit<AuditEventTable, 'hash'>): string {
  const fields = [r.seq, r.time, r.actor_user, r.actor_agent, r.key_id, r.source, r.action, r.namespace, r.sandbox, r.object, r.result, r.detail, r.prev_hash];
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex');
}

const toEvent = (r: AuditEventTable): AuditEvent => ({
  seq: r.seq,
  time: r.time,
  actor: {
    ...(r.actor_user ? { user: r.actor_user } : {}),
    ...(r.actor_agent ? { agent: r.actor_agent } : {}),
    ...(r.key_id ? { keyId: r.key_id } : {}),
    source: r.source,
  },
  action: r.action,
  namespace: r.namespace ?? '',
  sandbox: r.sandbox ?? '',
  object: r.object ?? '',
  result: r.result as AuditEvent['result'],
  detail: JSON.parse(r.detail) as Record<string, unknown>,
  prevHash: r.prev_hash,
  hash: r.hash,
});

/**
 * The append-only, tamper-evident audit log. Each event carries its
 * predecessor's hash; every CHECKPOINT_EVERY events the head is signed with a
 * key that lives in the data dir, not the store, so an edit, removal or
 * reordering in the store breaks the chain and a rewritten chain breaks a
 * checkpoint. Appends are serialised in this process and, through the store's
 * exclusive section, with every other server on the same database: each reads
 * the head from the store and appends to it, so replicas extend one chain.
 */
export class AuditLog {
  private tail: Promise<unknown> = Promise.resolve();
  private checkpointedAt = Date.now();

  private constructor(
    private readonly store: Store,
    private readonly signer: CheckpointSigner,
    private readonly log: Logger,
  ) {}

  static async open(store: Store, signer: CheckpointSigner, log: Logger): Promise<AuditLog> {
    return new AuditLog(store, signer, log);
  }

  /** Never throws: an event that cannot be stored is logged as an error. */
  record(e: AuditInput): Promise<void> {
    return this.append(async (head) => {
      const base = {
        seq: head.seq + 1,
        time: new Date().toISOString(),
        actor_user: e.actor.user ?? null,
        actor_agent: e.actor.agent ?? null,
        key_id: e.actor.keyId ?? null,
        source: e.actor.source,
        action: e.action,
        namespace: e.namespace ?? null,
        sandbox: e.sandbox ?? null,
        object: e.object ?? null,
        result: e.result,
        detail: JSON.stringify(e.detail ?? {}),
        prev_hash: head.hash,
      };
      const row = { ...base, hash: eventHash(base) };
      await this.store.db.insertInto('audit_events').values(row).execute();
      if (row.seq - head.checkpointed >= CHECKPOINT_EVERY) await this.checkpoint({ ...head, seq: row.seq, hash: row.hash });
    }).catch((err: unknown) => this.log.error({ err, action: e.action }, 'could not record an audit event'));
  }

  /** Signs the current head, if anything came after the last checkpoint. */
  flush(): Promise<void> {
    return this.append((head) => this.checkpoint(head));
  }

  /** Called periodically: bounds how long an event stays outside a signed checkpoint. */
  flushIfStale(): Promise<void> {
    return Date.now() - this.checkpointedAt >= CHECKPOINT_AFTER_MS ? this.flush() : Promise.resolve();
  }

  async query(q: AuditQuery): Promise<AuditEvent[]> {
    let s = this.store.db
      .selectFrom('audit_events')
      .selectAll()
      .orderBy('seq')
      .limit(q.limit ?? 1000);
    if (q.since) s = s.where('time', '>=', new Date(q.since).toISOString());
    if (q.until) s = s.where('time', '<', new Date(q.until).toISOString());
    if (q.user) s = s.where('actor_user', '=', q.user);
    if (q.agent) s = s.where('actor_agent', '=', q.agent);
    if (q.namespace) s = s.where('namespace', '=', q.namespace);
    if (q.sandbox) s = s.where('sandbox', '=', q.sandbox);
    if (q.action) s = s.where('action', '=', q.action);
    if (q.after !== undefined) s = s.where('seq', '>', q.after);
    const v = q.visibleTo;
    if (v) {
      s = s.where((eb) => {
        const mine = v.agent ? eb.and([eb('actor_user', '=', v.user), eb('actor_agent', '=', v.agent)]) : eb('actor_user', '=', v.user);
        return v.namespaces.length ? eb.or([mine, eb('namespace', 'in', v.namespaces)]) : mine;
      });
    }
    return (await s.execute()).map(toEvent);
  }

  /** Walks the whole chain and every checkpoint; reports the first place it does not hold. */
  async verify(): Promise<VerifyReport> {
    // Appends wait, so the walk sees one consistent chain.
    return this.serial(async () => {
      const cps = await this.store.db.selectFrom('audit_checkpoints').selectAll().orderBy('seq').execute();
      const broken = (at: number, reason: string): VerifyReport => ({ ok: false, events: at - 1, checkpoints: cps.length, brokenAt: at, reason });
      for (const cp of cps)
        if (!this.signer.verify(cp.seq, cp.hash, cp.signature)) return broken(cp.seq, `the checkpoint at event ${cp.seq} has an invalid signature`);
      const signed = new Map(cps.map((cp) => [cp.seq, cp.hash]));
      let expected = 1;
      let prev = GENESIS;
      for (let after = 0; ;) {
        const page = await this.store.db.selectFrom('audit_events').selectAll().where('seq', '>', after).orderBy('seq').limit(1000).execute();
        if (!page.length) break;
        for (const r of page) {
          if (r.seq !== expected) return broken(expected, `event ${expected} is missing (the next stored event is ${r.seq})`);
          if (r.prev_hash !== prev) return broken(r.seq, `event ${r.seq} does not follow event ${r.seq - 1}: an event was removed, reordered or replaced`);
          const { hash, ...rest } = r;
          if (eventHash(rest) !== hash) return broken(r.seq, `event ${r.seq} was altered after it was recorded`);
          if (signed.has(r.seq) && signed.get(r.seq) !== hash)
            return broken(r.seq, `the chain up to event ${r.seq} was rewritten: it does not match the signed checkpoint`);
          prev = hash;
          expected++;
        }
        after = page[page.length - 1]!.seq;
      }
      const last = cps.at(-1);
      if (last && last.seq >= expected)
        return broken(expected, `events ${expected} to ${last.seq} were removed (a signed checkpoint covers event ${last.seq})`);
      return { ok: true, events: expected - 1, checkpoints: cps.length };
    });
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => {});
    return next;
  }

  /** Runs fn on the stored head, alone: no other append here or on another server in between. */
  private append(fn: (head: Head) => Promise<void>): Promise<void> {
    return this.serial(() =>
      this.store.exclusive('moat.audit', async () => {
        const last = await this.store.db
          .selectFrom('audit_events')
          .select((eb) => ['seq', 'hash', eb.selectFrom('audit_checkpoints').select(eb.fn.max('seq').as('m')).as('checkpointed')])
          .orderBy('seq', 'desc')
          .limit(1)
          .executeTakeFirst();
        await fn({ seq: last?.seq ?? 0, hash: last?.hash ?? GENESIS, checkpointed: Number(last?.checkpointed ?? 0) });
      }),
    );
  }

  private async checkpoint({ seq, hash, checkpointed }: Head): Promise<void> {
    if (seq === checkpointed) return;
    await this.store.db
      .insertInto('audit_checkpoints')
      .values({ seq, hash, signature: this.signer.sign(seq, hash), time: new Date().toISOString() })
      .execute();
    this.checkpointedAt = Date.now();
  }
}
