import type { FastifyInstance, FastifyRequest } from 'fastify';
import { keyIdOf, presentedKey } from '../auth/keys.js';
import { AccessDenied } from '../auth/authorize.js';
import type { Actor, AuditLog } from './log.js';

const details = new WeakMap<FastifyRequest, Record<string, unknown>>();
const denied = new WeakSet<FastifyRequest>();

/** Routes add what only they know (an exec's exit code) to the request's audit event. */
export function addAuditDetail(req: FastifyRequest, detail: Record<string, unknown>): void {
  details.set(req, { ...details.get(req), ...detail });
}

/** The caller of an authenticated request, as audit events name it. */
export const actorOf = (req: FastifyRequest): Actor => ({ user: req.principal.user, agent: req.principal.agent, keyId: req.principal.keyId, source: req.ip });

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** `/apis/agents.x-k8s.io/v1alpha1/namespaces/ns/sandboxes/box/exec` → `sandboxes/box/exec` (the namespace has its own field) */
const shorten = (url: string) => url.replace(/^\/apis\/[^/]+\/[^/]+\//, '').replace(/^namespaces\/[^/]+\//, '');

/**
 * Every API mutation, and every refused call (reads too), becomes an audit
 * event when its response is done: who (key, user, agent, address), what
 * (route and object), and how it ended. Bodies are not recorded: they may
 * carry values the caller would not want copied (env, file content).
 */
export function auditRequests(app: FastifyInstance, audit: AuditLog): void {
  app.addHook('onError', async (req, _reply, err) => {
    if (err instanceof AccessDenied) denied.add(req);
  });
  app.addHook('onResponse', async (req, reply) => {
    const refused = denied.has(req) || reply.statusCode === 401;
    if (READS.has(req.method) && !refused) return;
    const params = (req.params ?? {}) as Record<string, unknown>;
    const template = req.routeOptions.url;
    const path = req.url.split('?')[0]!;
    const p = req.principal;
    const query = req.query && typeof req.query === 'object' && Object.keys(req.query).length ? { query: req.query } : {};
    await audit.record({
      actor: p ? actorOf(req) : { keyId: keyIdOf(presentedKey(req.headers.authorization, req.headers['x-api-key'] as string | undefined)), source: req.ip },
      action: `${req.method} ${template ? shorten(template).replace(/:([A-Za-z]+)/g, '{$1}') : path}`,
      namespace: typeof params.namespace === 'string' ? params.namespace : undefined,
      sandbox: template?.includes('/sandboxes/:name') ? String(params.name) : undefined,
      object: shorten(path),
      result: refused ? 'denied' : reply.statusCode >= 400 ? 'failed' : 'success',
      detail: { status: reply.statusCode, ...query, ...details.get(req) },
    });
  });
}
