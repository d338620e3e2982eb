import { Type, type TSchema } from '@sinclair/typebox';
import { CONDITION, EXTENSIONS_API_VERSION, assertName } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ExtensionObjects, ObjectInput } from '../../backends/types.js';
import type { Identity } from '../../identity/identity.js';
import { assertOwned, authorize } from '../../auth/authorize.js';
import { NameParams, NsParams } from './sandboxes.js';

const Selector = Type.Object({ labelSelector: Type.Optional(Type.String()) }, { additionalProperties: false });

/**
 * CRUD, wait and list routes for one extension kind, Kubernetes-style, under
 * `/apis/extensions.agents.x-k8s.io/v1alpha1/`. Bodies may say v1alpha1 or
 * v1beta1; answers say v1alpha1.
 */
export function objectRoutes<T extends { metadata: { namespace: string } }>(
  app: FastifyInstance,
  identity: Identity,
  c: ExtensionObjects<T>,
  opts: { plural: string; kind: string; body: TSchema; tag: string },
) {
  const base = `/apis/${EXTENSIONS_API_VERSION}/namespaces/:namespace/${opts.plural}`;
  const list = (items: unknown[]) => ({ apiVersion: EXTENSIONS_API_VERSION, kind: `${opts.kind}List`, metadata: {}, items });
  const tags = [opts.tag];

  app.get(
    `/apis/${EXTENSIONS_API_VERSION}/${opts.plural}`,
    { schema: { tags, summary: `List ${opts.kind}s in every namespace the key may see`, querystring: Selector } },
    async (req) => {
      const items = await c.list(undefined, (req.query as { labelSelector?: string }).labelSelector);
      return list(items.filter((o) => authorize(req.principal, o.metadata.namespace, 'read', false)));
    },
  );

  app.get(base, { schema: { tags, summary: `List ${opts.kind}s`, params: NsParams, querystring: Selector } }, async (req) => {
    const { namespace } = req.params as { namespace: string };
    authorize(req.principal, namespace, 'read');
    return list(await c.list(namespace, (req.query as { labelSelector?: string }).labelSelector));
  });

  app.post(base, { schema: { tags, summary: `Create a ${opts.kind}`, params: NsParams, body: opts.body } }, async (req, reply) => {
    const { namespace } = req.params as { namespace: string };
    authorize(req.principal, assertName(namespace, 'namespace'), 'write');
    await assertOwned(identity, namespace);
    return reply.status(201).send(await c.create(namespace, req.body as ObjectInput));
  });

  app.get(`${base}/:name`, { schema: { tags, summary: `Get a ${opts.kind}`, params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    return c.get(namespace, name);
  });

  app.put(
    `${base}/:name`,
    { schema: { tags, summary: `Replace a ${opts.kind}'s labels, annotations and spec`, params: NameParams, body: opts.body } },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'write');
      return c.replace(namespace, name, req.body as ObjectInput);
    },
  );

  app.delete(
    `${base}/:name`,
    {
      schema: {
        tags,
        summary: `Delete a ${opts.kind} and what it owns`,
        params: NameParams,
        querystring: Type.Object({ wait: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'write');
      return c.delete(namespace, name, (req.query as { wait?: boolean }).wait ?? false);
    },
  );

  app.get(
    `${base}/:name/wait`,
    {
      schema: {
        tags,
        summary: 'Block until a condition is True (408 on timeout)',
        params: NameParams,
        querystring: Type.Object(
          { condition: Type.Optional(Type.String({ maxLength: 63 })), timeoutSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 3600 })) },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      const q = req.query as { condition?: string; timeoutSeconds?: number };
      authorize(req.principal, namespace, 'read');
      return c.waitFor(namespace, name, q.condition ?? CONDITION.Ready, (q.timeoutSeconds ?? 60) * 1000);
    },
  );
}
