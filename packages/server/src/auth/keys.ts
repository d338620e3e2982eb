import { createHash, randomBytes } from 'node:crypto';
import { unauthorized } from '@moat/core';
import type { Store } from '../store/store.js';

/** Who is calling. The identity issue extends this with agents and per-role checks. */
export interface Principal {
  user: string;
  role: 'admin' | 'member' | 'viewer';
  keyId: string;
}

const PREFIX = 'moat_';

/** API keys are 256-bit random secrets, so a plain SHA-256 is a sound at-rest hash (no need for a slow KDF). */
export const hashKey = (key: string) => createHash('sha256').update(key).digest('hex');

export async function createApiKey(store: Store, opts: { name: string; user: string; role: Principal['role'] }) {
  const id = randomBytes(6).toString('hex');
  const key = `${PREFIX}${id}_${randomBytes(32).toString('base64url')}`;
  await store.insertKey({
    id,
    name: opts.name,
    hash: hashKey(key),
    user: opts.user,
    role: opts.role,
    created_at: new Date().toISOString(),
    expires_at: null,
    revoked_at: null,
  });
  return { id, key };
}

export async function authenticate(store: Store, header: string | undefined, apiKeyHeader: string | undefined): Promise<Principal> {
  const bearer = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
  const key = bearer ?? apiKeyHeader;
  if (!key) throw unauthorized('missing API key: send "Authorization: Bearer <key>" (the key `moat up` printed)');
  const row = await store.keyByHash(hashKey(key));
  if (!row || row.revoked_at) throw unauthorized('invalid API key');
  if (row.expires_at && Date.parse(row.expires_at) < Date.now()) throw unauthorized(`API key ${row.id} expired at ${row.expires_at}`);
  return { user: row.user, role: row.role as Principal['role'], keyId: row.id };
}
