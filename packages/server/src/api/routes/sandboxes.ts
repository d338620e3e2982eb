import { readFile } from 'node:fs/promises';
import { Type } from '@sinclair/typebox';
import { SANDBOX_API_VERSION, SandboxSchema, assertName } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../context.js';
import { assertOwned, authorize } from '../authorize.js';

export const SANDBOXES = `/apis/${SANDBOX_API_VERSION}/namespaces/:namespace/sandboxes`;
export const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) });
export const NameParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), name: Type.String({ maxLength: 253 }) });

const list = (items: unknown[]) => ({ apiVersion: SANDBOX_API_VERSION, kind: 'SandboxList', metadata: {}, items });

export function sandboxRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { sandboxes } = ctx;

  app.get(`/apis/${SANDBOX_API_VERSION}/sandboxes`, {
    schema: { tags: ['sandboxes'], summary: 'List sandboxes in every namespace the key may see', querystring: Type.Object({ labelSelector: Type.Optional(Type.String()) }, { additionalProperties: false }) },
  }, async (req) => {
    const q = req.query as { labelSelector?: string };
    const items = await sandboxes.list(undefined, q.labelSelector);
    return list(items.filter((s) => authorize(req.principal, s.metadata.namespace, 'read', false)));
  });

  app.get(SANDBOXES, {
    schema: { tags: ['sandboxes'], summary: 'List sandboxes', params: NsParams, querystring: Type.Object({ labelSelector: Type.Optional(Type.String()) }, { additionalProperties: false }) },
  }, async (req) => {
    const { namespace } = req.params as { namespace: string };
    authorize(req.principal, namespace, 'read');
    return list(await sandboxes.list(namespace, (req.query as { labelSelector?: string }).labelSelector));
  });

  app.post(SANDBOXES, {
    schema: { tags: ['sandboxes'], summary: 'Create a sandbox; it starts at once (watch the Ready condition)', params: NsParams, body: SandboxSchema },
  }, async (req, reply) => {
    const { namespace } = req.params as { namespace: string };
    authorize(req.principal, assertName(namespace, 'namespace'), 'write');
    await assertOwned(ctx.identity, namespace);
    const created = await sandboxes.create(namespace, req.body as never);
    return reply.status(201).send(created);
  });

  app.get(`${SANDBOXES}/:name`, { schema: { tags: ['sandboxes'], summary: 'Get a sandbox, with its resource usage', params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    if (sandbox.status.phase === 'Running' || sandbox.status.phase === 'Paused') {
      const usage = await sandboxes.driverFor(sandbox).usage(sandbox.metadata.uid).catch(() => undefined);
      if (usage) sandbox.status.resourceUsage = usage;
    }
    return sandbox;
  });

  app.delete(`${SANDBOXES}/:name`, {
    schema: { tags: ['sandboxes'], summary: 'Delete a sandbox and everything it has on the host', params: NameParams, querystring: Type.Object({ wait: Type.Optional(Type.Boolean()) }, { additionalProperties: false }) },
  }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'write');
    return sandboxes.delete(namespace, name, (req.query as { wait?: boolean }).wait ?? false);
  });

  for (const action of ['pause', 'resume'] as const) {
    app.post(`${SANDBOXES}/:name/${action}`, {
      schema: {
        tags: ['sandboxes'],
        summary: action === 'pause'
          ? 'Freeze every process of a running sandbox (memory stays allocated); exec and file calls resume it'
          : 'Thaw a paused sandbox',
        params: NameParams,
      },
    }, async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'write');
      return sandboxes[action](namespace, name);
    });
  }

  app.get(`${SANDBOXES}/:name/wait`, {
    schema: {
      tags: ['sandboxes'],
      summary: 'Block until a condition holds (Ready), the sandbox fails (409) or the timeout passes (408)',
      params: NameParams,
      querystring: Type.Object({ condition: Type.Optional(Type.String()), timeoutSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 3600 })) }, { additionalProperties: false }),
    },
  }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    const q = req.query as { condition?: string; timeoutSeconds?: number };
    authorize(req.principal, namespace, 'read');
    return sandboxes.waitFor(namespace, name, q.condition ?? 'Ready', (q.timeoutSeconds ?? 60) * 1000);
  });

  app.get(`${SANDBOXES}/:name/events`, { schema: { tags: ['sandboxes'], summary: 'Events of a sandbox, oldest first', params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    return { items: await sandboxes.events(sandbox.metadata.uid) };
  });

  app.get(`${SANDBOXES}/:name/egress`, {
    schema: {
      tags: ['sandboxes'],
      summary: "The egress proxy's decisions for a sandbox, oldest first",
      params: NameParams,
      querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) }, { additionalProperties: false }),
    },
  }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    return { items: await ctx.store.egressLog(sandbox.metadata.uid, (req.query as { limit?: number }).limit ?? 500) };
  });

  app.get(`${SANDBOXES}/:name/logs`, {
    schema: { tags: ['sandboxes'], summary: 'Output of the main command', params: NameParams, querystring: Type.Object({ tailLines: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false }) },
  }, async (req, reply) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    const text = await readFile(sandboxes.driverFor(sandbox).logPath(sandbox.metadata.uid), 'utf8').catch(() => '');
    const tail = (req.query as { tailLines?: number }).tailLines;
    const out = tail === undefined ? text : text.split('\n').slice(-tail - 1).join('\n');
    return reply.type('text/plain; charset=utf-8').send(out);
  });
}
