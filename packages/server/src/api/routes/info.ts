import { MOAT_API_VERSION } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../context.js';

export function infoRoutes(app: FastifyInstance, ctx: ApiContext) {
  app.get(
    `/apis/${MOAT_API_VERSION}/info`,
    { schema: { tags: ['server'], summary: 'Server version, sandbox backend and its capabilities, runtimes and limits' } },
    async () => ({
      version: ctx.version,
      // `leads`: this replica runs the work done once for all (on a cluster, it holds the leader Lease).
      backend: { kind: ctx.backend.kind, capabilities: ctx.backend.capabilities, leads: ctx.backend.leads() },
      runtimes: ctx.backend.runtimes,
      limits: ctx.limits,
    }),
  );
}
