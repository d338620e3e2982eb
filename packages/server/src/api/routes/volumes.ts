import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, assertName } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import { assertOwned, authorize } from '../../auth/authorize.js';
import type { ApiContext } from '../context.js';
import { volumeSize } from '../../volumes/service.js';

const VOLUMES = `/apis/${MOAT_API_VERSION}/namespaces/:namespace/volumes`;
const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const NameParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), name: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const CreateBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63, description: 'a DNS-1123 label' }),
    size: Type.Union([Type.String({ minLength: 1, maxLength: 32 }), Type.Integer({ minimum: 1 })], {
      description: 'ext4 size: 1Gi, 500Mi, bytes (16Mi to 1Ti)',
    }),
  },
  { additionalProperties: false },
);

const list = (items: unknown[]) => ({ apiVersion: MOAT_API_VERSION, kind: 'VolumeList', items });

/** Named volumes: `/data` images that outlive sandboxes when asked (docs/lifecycle.md). */
export function volumeRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { volumes } = ctx;
  const tags = ['volumes'];

  app.get(VOLUMES, { schema: { tags, summary: "List a namespace's volumes", params: NsParams } }, async (req) => {
    const { namespace } = req.params as Static<typeof NsParams>;
    authorize(req.principal, namespace, 'read');
    return list(await volumes.list(namespace));
  });

  app.post(
    VOLUMES,
    { schema: { tags, summary: 'Create an empty volume (ext4 of the given size), kept until deleted', params: NsParams, body: CreateBody } },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof NsParams>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      await assertOwned(ctx.identity, namespace);
      const body = req.body as Static<typeof CreateBody>;
      return reply.status(201).send(await volumes.create(namespace, assertName(body.name, 'name'), volumeSize(body.size, 'size')));
    },
  );

  app.get(`${VOLUMES}/:name`, { schema: { tags, summary: 'Get a volume: size, the sandbox it is attached to', params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as Static<typeof NameParams>;
    authorize(req.principal, namespace, 'read');
    return volumes.get(namespace, name);
  });

  app.delete(`${VOLUMES}/:name`, { schema: { tags, summary: 'Delete a volume and its data (409 while attached)', params: NameParams } }, async (req, reply) => {
    const { namespace, name } = req.params as Static<typeof NameParams>;
    authorize(req.principal, namespace, 'write');
    await volumes.delete(namespace, name);
    return reply.status(204).send();
  });
}
