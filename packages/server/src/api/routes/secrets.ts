import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, assertName } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import { assertOwned, authorize, requireAdmin } from '../../auth/authorize.js';
import type { ApiContext } from '../context.js';

const SECRETS = `/apis/${MOAT_API_VERSION}/namespaces/:namespace/secrets`;
const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const NameParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), name: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const Value = Type.String({ maxLength: 65536, description: 'write-only: never returned' });
const CreateBody = Type.Object({ name: Type.String({ minLength: 1, maxLength: 63 }), value: Value }, { additionalProperties: false });
const ReplaceBody = Type.Object({ value: Value }, { additionalProperties: false });

const list = (items: unknown[]) => ({ apiVersion: MOAT_API_VERSION, kind: 'SecretList', items });

/** Write-only secrets: answers carry names and times, never values. */
export function secretRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { secrets } = ctx;
  const tags = ['secrets'];

  app.get(SECRETS, { schema: { tags, summary: "List a namespace's secrets (names only)", params: NsParams } }, async (req) => {
    const { namespace } = req.params as Static<typeof NsParams>;
    authorize(req.principal, namespace, 'read');
    return list(await secrets.list(namespace));
  });

  app.post(
    SECRETS,
    { schema: { tags, summary: 'Create a secret; its value is stored encrypted and never returned', params: NsParams, body: CreateBody } },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof NsParams>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      await assertOwned(ctx.identity, namespace);
      const body = req.body as Static<typeof CreateBody>;
      return reply.status(201).send(await secrets.create(namespace, body.name, body.value));
    },
  );

  app.get(`${SECRETS}/:name`, { schema: { tags, summary: "A secret's name and times", params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as Static<typeof NameParams>;
    authorize(req.principal, namespace, 'read');
    return secrets.get(namespace, name);
  });

  app.put(`${SECRETS}/:name`, { schema: { tags, summary: "Replace a secret's value", params: NameParams, body: ReplaceBody } }, async (req) => {
    const { namespace, name } = req.params as Static<typeof NameParams>;
    authorize(req.principal, namespace, 'write');
    return secrets.replace(namespace, name, (req.body as Static<typeof ReplaceBody>).value);
  });

  app.delete(`${SECRETS}/:name`, { schema: { tags, summary: 'Delete a secret', params: NameParams } }, async (req, reply) => {
    const { namespace, name } = req.params as Static<typeof NameParams>;
    authorize(req.principal, namespace, 'write');
    await secrets.delete(namespace, name);
    return reply.status(204).send();
  });

  app.post(
    `/apis/${MOAT_API_VERSION}/secrets/rotate-key`,
    { schema: { tags, summary: 'Make a new master key and re-encrypt every secret with it (admin)' } },
    async (req) => {
      requireAdmin(req.principal, 'rotate the master key');
      return { reencrypted: await secrets.rotateKey() };
    },
  );
}
