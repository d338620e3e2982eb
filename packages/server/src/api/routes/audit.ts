import { Readable } from 'node:stream';
import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION } from '@moat/core';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditQuery } from '../../audit/log.js';
import { isAdmin, requireAdmin } from '../../auth/authorize.js';
import type { ApiContext } from '../context.js';

const AUDIT = `/apis/${MOAT_API_VERSION}/audit`;

const Filters = {
  since: Type.Optional(Type.String({ format: 'date-time' })),
  until: Type.Optional(Type.String({ format: 'date-time' })),
  user: Type.Optional(Type.String({ maxLength: 63 })),
  agent: Type.Optional(Type.String({ maxLength: 63 })),
  namespace: Type.Optional(Type.String({ maxLength: 63 })),
  sandbox: Type.Optional(Type.String({ maxLength: 253 })),
  action: Type.Optional(Type.String({ maxLength: 256 })),
};
const ListQuery = Type.Object(
  { ...Filters, after: Type.Optional(Type.Integer({ minimum: 0 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) },
  { additionalProperties: false },
);
const ExportQuery = Type.Object(Filters, { additionalProperties: false });

/** Admins see every event; anyone else the events in their namespaces and their own. */
function scoped(req: FastifyRequest, q: AuditQuery): AuditQuery {
  const p = req.principal;
  return isAdmin(p) ? q : { ...q, visibleTo: { namespaces: [...p.namespaces.keys()], user: p.user, agent: p.agent } };
}

export function auditRoutes(app: FastifyInstance, ctx: ApiContext) {
  const tags = ['audit'];

  app.get(AUDIT, { schema: { tags, summary: 'Audit events, oldest first; page with `after` (the last seq seen)', querystring: ListQuery } }, async (req) => ({
    items: await ctx.audit.query(scoped(req, req.query as Static<typeof ListQuery>)),
  }));

  app.get(`${AUDIT}/export`, { schema: { tags, summary: 'Audit events as JSON Lines, oldest first', querystring: ExportQuery } }, async (req, reply) => {
    const q = scoped(req, req.query as Static<typeof ExportQuery>);
    async function* lines() {
      for (let after = 0; ;) {
        const page = await ctx.audit.query({ ...q, after, limit: 1000 });
        for (const e of page) yield JSON.stringify(e) + '\n';
        if (page.length < 1000) return;
        after = page[page.length - 1]!.seq;
      }
    }
    return reply.type('application/jsonl').send(Readable.from(lines()));
  });

  app.get(
    `${AUDIT}/verify`,
    { schema: { tags, summary: 'Check the hash chain and signed checkpoints (admin); `ok: false` names the first broken event' } },
    async (req) => {
      requireAdmin(req.principal, 'verify the audit log');
      return ctx.audit.verify();
    },
  );
}
