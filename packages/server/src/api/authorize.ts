import { forbidden, notFound } from '@moat/core';
import type { Principal } from '../auth/keys.js';

/**
 * The one place that decides who may touch a namespace. Until the identity
 * model lands every key is an admin's; viewers may only read. Denials look
 * like "not found" so a namespace's existence does not leak.
 */
export function authorize(p: Principal, namespace: string, verb: 'read' | 'write', raise = true): boolean {
  const ok = p.role === 'admin' || (p.role !== 'viewer' || verb === 'read') && namespace === p.user;
  if (!ok && raise) throw verb === 'write' && namespace === p.user ? forbidden('this key may only read') : notFound(`namespace "${namespace}" not found`);
  return ok;
}
