import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, assertName, notFound } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import { GatewayConfigSchema, deleteGatewayConfig, getGatewayConfig, putGatewayConfig, type GatewayConfig } from '../../gateway/config.js';
import { today, usage } from '../../gateway/usage.js';
import { assertOwned, authorize } from '../../auth/authorize.js';
import type { ApiContext } from '../context.js';

const GATEWAY = `/apis/${MOAT_API_VERSION}/namespaces/:namespace/gateway`;
const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const UsageQuery = Type.Object(
  { day: Type.Optional(Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'UTC day, default today' })) },
  { additionalProperties: false },
);

/** A namespace's API gateway settings (providers, models, budgets, credential rules) and its LLM usage. */
export function gatewayRoutes(app: FastifyInstance, ctx: ApiContext) {
  const tags = ['gateway'];

  app.get(GATEWAY, { schema: { tags, summary: "The namespace's gateway configuration", params: NsParams } }, async (req) => {
    const { namespace } = req.params as Static<typeof NsParams>;
    authorize(req.principal, namespace, 'read');
    const cfg = await getGatewayConfig(ctx.store, namespace);
    if (!cfg) throw notFound(`namespace "${namespace}" has no gateway configuration`);
    return cfg;
  });

  app.put(GATEWAY, { schema: { tags, summary: "Set the namespace's gateway configuration", params: NsParams, body: GatewayConfigSchema } }, async (req) => {
    const { namespace } = req.params as Static<typeof NsParams>;
    authorize(req.principal, assertName(namespace, 'namespace'), 'write');
    await assertOwned(ctx.identity, namespace);
    await putGatewayConfig(ctx.store, namespace, req.body as GatewayConfig);
    return req.body;
  });

  app.delete(
    GATEWAY,
    { schema: { tags, summary: "Remove the namespace's gateway configuration (every gateway call is refused)", params: NsParams } },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof NsParams>;
      authorize(req.principal, namespace, 'write');
      if (!(await deleteGatewayConfig(ctx.store, namespace))) throw notFound(`namespace "${namespace}" has no gateway configuration`);
      return reply.status(204).send();
    },
  );

  app.get(
    `${GATEWAY}/usage`,
    { schema: { tags, summary: 'LLM requests and tokens of a day, per sandbox and model', params: NsParams, querystring: UsageQuery } },
    async (req) => {
      const { namespace } = req.params as Static<typeof NsParams>;
      authorize(req.principal, namespace, 'read');
      return { items: await usage(ctx.store, namespace, (req.query as Static<typeof UsageQuery>).day ?? today()) };
    },
  );
}
