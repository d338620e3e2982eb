import type { EgressRecord } from '@moat/gateway';
import type { Identity } from '../identity/identity.js';
import type { AuditLog } from './log.js';

/** An egress proxy decision as an audit event, on behalf of the sandbox's owner. */
export async function auditEgress(audit: AuditLog, identity: Identity, r: EgressRecord): Promise<void> {
  const owner = r.sandbox ? await identity.owner(r.sandbox.namespace) : undefined;
  await audit.record({
    actor: { user: owner?.user, agent: owner?.agent, source: r.remoteAddress },
    action: 'egress',
    namespace: r.sandbox?.namespace,
    sandbox: r.sandbox?.name,
    object: `${r.method} ${r.host}:${r.port}${r.path ?? ''}`,
    result: r.allowed ? 'success' : 'denied',
    detail: {
      rule: r.rule,
      reason: r.reason,
      status: r.status,
      resolvedAddress: r.resolvedAddress,
      bytesUp: r.bytesUp,
      bytesDown: r.bytesDown,
      durationMs: r.durationMs,
    },
  });
}
