import { createHash, randomBytes } from 'node:crypto';
import { badRequest, notFound, unauthorized } from '@moat/core';
import type { Identity, Role } from '../identity/identity.js';
import type { Store } from '../store/store.js';
import type { ApiKeyTable } from '../store/schema.js';

/** Who is calling. */
export interface Principal {
  user: string;
  role: Role;
  /** Set when the key is scoped to one agent: it reaches that agent's namespace only and manages nothing. */
  agent?: string;
  keyId: string;
  /** namespace → agent: what this key may reach (all its user's namespaces, or its agent's). */
  namespaces: Map<string, string>;
}

/** What the API shows of a key: never the key or its hash. */
export interface KeyInfo {
  id: string;
  name: string;
  user: string;
  agent?: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
}

const PREFIX = 'moat_';

/** API keys are 256-bit random secrets, so a plain SHA-256 is a sound at-rest hash (no need for a slow KDF). */
export const hashKey = (key: string) => createHash('sha256').update(key).digest('hex');

const toInfo = (r: ApiKeyTable): KeyInfo => ({
  id: r.id,
  name: r.name,
  user: r.user,
  ...(r.agent ? { agent: r.agent } : {}),
  createdAt: r.created_at,
  ...(r.expires_at ? { expiresAt: r.expires_at } : {}),
  ...(r.revoked_at ? { revokedAt: r.revoked_at } : {}),
});

/** The key itself is returned once, here, and only its hash is kept. */
export async function createApiKey(store: Store, opts: { name: string; user: string; agent?: string | undefined; expiresAt?: string | undefined }) {
  if (opts.expiresAt !== undefined && !(Date.parse(opts.expiresAt) > Date.now()))
    throw badRequest(`expiresAt "${opts.expiresAt}" must be a date-time in the future`);
  const id = randomBytes(6).toString('hex');
  const key = `${PREFIX}${id}_${randomBytes(32).toString('base64url')}`;
  const row: ApiKeyTable = {
    id,
    name: opts.name,
    hash: hashKey(key),
    user: opts.user,
    agent: opts.agent ?? null,
    created_at: new Date().toISOString(),
    expires_at: opts.expiresAt ? new Date(opts.expiresAt).toISOString() : null,
    revoked_at: null,
  };
  await store.insertKey(row);
  return { ...toInfo(row), key };
}

export async function listApiKeys(store: Store, user: string): Promise<KeyInfo[]> {
  return (await store.db.selectFrom('api_keys').selectAll().where('user', '=', user).orderBy('created_at').execute()).map(toInfo);
}

export async function revokeApiKey(store: Store, user: string, id: string): Promise<KeyInfo> {
  const revokedAt = new Date().toISOString();
  const row = await store.db
    .updateTable('api_keys')
    .set({ revoked_at: revokedAt })
    .where('user', '=', user)
    .where('id', '=', id)
    .where('revoked_at', 'is', null)
    .returningAll()
    .executeTakeFirst();
  if (row) return toInfo(row);
  const old = await store.db.selectFrom('api_keys').selectAll().where('user', '=', user).where('id', '=', id).executeTakeFirst();
  if (!old) throw notFound(`API key ${id} of user "${user}" not found`, { kind: 'keys', name: id });
  return toInfo(old); // revoking twice is not an error
}

/** The key's id, or undefined: for recording who tried what even when the key is refused. */
export const keyIdOf = (key: string | undefined) => key?.match(/^moat_([0-9a-f]{12})_/)?.[1];

export function presentedKey(authorization: string | undefined, apiKeyHeader: string | undefined): string | undefined {
  return authorization?.match(/^Bearer\s+(\S+)$/i)?.[1] ?? apiKeyHeader;
}

export async function authenticate(store: Store, identity: Identity, key: string | undefined): Promise<Principal> {
  if (!key) throw unauthorized('missing API key: send "Authorization: Bearer <key>" (the key `moat up` printed)');
  return principalOfKey(identity, await store.keyByHash(hashKey(key)));
}

/** The principal of the key with this id: how a portal session, which holds the key's id, is checked on every request. */
export async function authenticateKeyId(store: Store, identity: Identity, id: string): Promise<Principal> {
  return principalOfKey(identity, await store.db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst());
}

/** A stored key's principal; a revoked or expired key, or one whose user is gone, is refused. */
async function principalOfKey(identity: Identity, row: ApiKeyTable | undefined): Promise<Principal> {
  if (!row || row.revoked_at) throw unauthorized('invalid API key');
  if (row.expires_at && Date.parse(row.expires_at) < Date.now()) throw unauthorized(`API key ${row.id} expired at ${row.expires_at}`);
  const user = await identity.findUser(row.user);
  if (!user) throw unauthorized('invalid API key');
  const agents = (await identity.listAgents(row.user)).filter((a) => !row.agent || a.name === row.agent);
  return {
    user: row.user,
    role: user.role,
    ...(row.agent ? { agent: row.agent } : {}),
    keyId: row.id,
    namespaces: new Map(agents.map((a) => [a.namespace, a.name])),
  };
}
