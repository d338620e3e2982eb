import { MoatError } from '@moat/core';
import type { Principal } from './keys.js';
import type { Identity } from '../identity/identity.js';

export type Verb = 'read' | 'write';

/** A refusal, answered like any 403/404 but audited as a denial. */
export class AccessDenied extends MoatError {}

const forbidden = (message: string) => new AccessDenied(403, 'Forbidden', message);
const notFound = (message: string, details?: Record<string, unknown>) => new AccessDenied(404, 'NotFound', message, details);

/** A user-scoped key of an admin: anything, anywhere. An admin's agent key is confined like anyone's. */
export const isAdmin = (p: Principal) => p.role === 'admin' && !p.agent;

/**
 * The one place that decides who may touch a namespace: admins everywhere,
 * members in their own namespaces (an agent key in its agent's only),
 * viewers read their own. Another tenant's namespace looks like one that
 * does not exist, so nothing about it leaks.
 */
export function authorize(p: Principal, namespace: string, verb: Verb, raise = true): boolean {
  const own = p.namespaces.has(namespace);
  const ok = isAdmin(p) || (own && (verb === 'read' || p.role !== 'viewer'));
  if (!ok && raise) throw own ? forbidden(`user "${p.user}" is a viewer: viewer keys may only read`) : notFound(`namespace "${namespace}" not found`);
  return ok;
}

/**
 * Managing a user's agents and keys: admins for anyone, users for themselves
 * with a user-scoped key (an agent's key must not mint keys or agents).
 */
export function authorizeUser(p: Principal, user: string, verb: Verb): void {
  if (isAdmin(p)) return;
  if (p.user !== user) throw notFound(`user "${user}" not found`, { kind: 'users', name: user });
  if (verb === 'write' && p.agent) throw forbidden(`this key is agent "${p.agent}"'s: agent keys cannot manage agents or keys`);
  if (verb === 'write' && p.role === 'viewer') throw forbidden(`user "${p.user}" is a viewer: viewer keys may only read`);
}

/** Users, roles and quotas are an admin's to manage. */
export function requireAdmin(p: Principal, what: string): void {
  if (!isAdmin(p)) throw forbidden(`only an admin's user key may ${what}`);
}

/** Objects are created only where a (user, agent) pair owns the namespace. */
export async function assertOwned(identity: Identity, namespace: string): Promise<void> {
  if (!(await identity.owner(namespace)))
    throw new MoatError(404, 'NotFound', `namespace "${namespace}" not found: namespaces belong to agents (\`moat agents create\`)`);
}
