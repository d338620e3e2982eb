import { Type } from '@sinclair/typebox';
import { CONDITION, LABELS, SANDBOX_API_VERSION, SandboxSchema, assertName, badRequest } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../context.js';
import { assertOwned, authorize } from '../../auth/authorize.js';
import { requireCapability } from '../../backends/types.js';

export const SANDBOXES = `/apis/${SANDBOX_API_VERSION}/namespaces/:namespace/sandboxes`;
export const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) });
export const NameParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), name: Type.String({ maxLength: 253 }) });

/** The longest a sandbox may be given to live from now. */
const MAX_TTL_SECONDS = 366 * 86400;

const list = (items: unknown[]) => ({ apiVersion: SANDBOX_API_VERSION, kind: 'SandboxList', metadata: {}, items });

export function sandboxRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { sandboxes } = ctx.backend;

  app.get(
    `/apis/${SANDBOX_API_VERSION}/sandboxes`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'List sandboxes in every namespace the key may see',
        querystring: Type.Object({ labelSelector: Type.Optional(Type.String()) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const q = req.query as { labelSelector?: string };
      const items = await sandboxes.list(undefined, q.labelSelector);
      return list(items.filter((s) => authorize(req.principal, s.metadata.namespace, 'read', false)));
    },
  );

  app.get(
    SANDBOXES,
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'List sandboxes',
        params: NsParams,
        querystring: Type.Object({ labelSelector: Type.Optional(Type.String()) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const { namespace } = req.params as { namespace: string };
      authorize(req.principal, namespace, 'read');
      return list(await sandboxes.list(namespace, (req.query as { labelSelector?: string }).labelSelector));
    },
  );

  app.post(
    SANDBOXES,
    {
      schema: { tags: ['sandboxes'], summary: 'Create a sandbox; it starts at once (watch the Ready condition)', params: NsParams, body: SandboxSchema },
    },
    async (req, reply) => {
      const { namespace } = req.params as { namespace: string };
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      await assertOwned(ctx.identity, namespace);
      const created = await sandboxes.create(namespace, req.body as never);
      return reply.status(201).send(created);
    },
  );

  app.get(`${SANDBOXES}/:name`, { schema: { tags: ['sandboxes'], summary: 'Get a sandbox, with its resource usage', params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    if (sandbox.status.phase === 'Running' || sandbox.status.phase === 'Paused') {
      const usage = await sandboxes.usage(sandbox);
      if (usage) sandbox.status.resourceUsage = usage;
    }
    return sandbox;
  });

  app.delete(
    `${SANDBOXES}/:name`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Delete a sandbox and everything it has on the host',
        params: NameParams,
        querystring: Type.Object({ wait: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'write');
      return sandboxes.delete(namespace, name, (req.query as { wait?: boolean }).wait ?? false);
    },
  );

  const summaries = {
    pause: 'Freeze every process of a running sandbox (memory stays allocated); exec and file calls resume it',
    resume: 'Thaw a paused sandbox',
    hibernate:
      'Save the processes and memory of a running or paused sandbox to disk and free its memory (or stop it keeping its disks when it cannot be checkpointed); exec, file calls and port connections wake it',
    wake: 'Restore a hibernated sandbox with its processes and memory (or start it again on its disks)',
  };
  const needs = { pause: 'pause', resume: 'pause', hibernate: 'hibernate', wake: 'hibernate' } as const;
  for (const action of ['pause', 'resume', 'hibernate', 'wake'] as const) {
    app.post(
      `${SANDBOXES}/:name/${action}`,
      {
        schema: {
          tags: ['sandboxes'],
          summary: summaries[action],
          params: NameParams,
        },
      },
      async (req) => {
        const { namespace, name } = req.params as { namespace: string; name: string };
        authorize(req.principal, namespace, 'write');
        requireCapability(ctx.backend, needs[action], `${action} sandboxes`);
        return sandboxes[action](namespace, name);
      },
    );
  }

  app.post(
    `${SANDBOXES}/:name/extend`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: "Set when the sandbox shuts down: ttlSeconds from now, or a shutdownTime (a claimed sandbox: its claim's)",
        params: NameParams,
        body: Type.Object(
          {
            ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TTL_SECONDS })),
            shutdownTime: Type.Optional(Type.String({ format: 'date-time' })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      const body = req.body as { ttlSeconds?: number; shutdownTime?: string };
      authorize(req.principal, namespace, 'write');
      if ((body.ttlSeconds === undefined) === (body.shutdownTime === undefined)) throw badRequest('give exactly one of ttlSeconds and shutdownTime');
      const when = body.shutdownTime ? Date.parse(body.shutdownTime) : Date.now() + body.ttlSeconds! * 1000;
      if (when > Date.now() + MAX_TTL_SECONDS * 1000) throw badRequest(`shutdownTime must be within ${MAX_TTL_SECONDS / 86400} days`);
      const shutdownTime = new Date(when).toISOString();
      const { sandbox } = await sandboxes.get(namespace, name);
      const claim = sandbox.metadata.labels?.[LABELS.claim];
      if (claim) await ctx.backend.claims.extend(namespace, claim, shutdownTime);
      else await sandboxes.setShutdownTime(namespace, name, shutdownTime);
      return sandboxes.revive(namespace, name);
    },
  );

  app.get(
    `${SANDBOXES}/:name/wait`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Block until a condition holds (Ready), the sandbox fails (409) or the timeout passes (408)',
        params: NameParams,
        querystring: Type.Object(
          { condition: Type.Optional(Type.String()), timeoutSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 3600 })) },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      const q = req.query as { condition?: string; timeoutSeconds?: number };
      authorize(req.principal, namespace, 'read');
      return sandboxes.waitFor(namespace, name, q.condition ?? CONDITION.Ready, (q.timeoutSeconds ?? 60) * 1000);
    },
  );

  app.get(`${SANDBOXES}/:name/events`, { schema: { tags: ['sandboxes'], summary: 'Events of a sandbox, oldest first', params: NameParams } }, async (req) => {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, 'read');
    const { sandbox } = await sandboxes.get(namespace, name);
    return { items: await sandboxes.events(sandbox.metadata.uid) };
  });

  app.get(
    `${SANDBOXES}/:name/egress`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: "The egress proxy's decisions for a sandbox, oldest first",
        params: NameParams,
        querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'read');
      const { sandbox } = await sandboxes.get(namespace, name);
      return { items: await ctx.store.egressLog(sandbox.metadata.uid, (req.query as { limit?: number }).limit ?? 500) };
    },
  );

  app.get(
    `${SANDBOXES}/:name/logs`,
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Output of the main command',
        params: NameParams,
        querystring: Type.Object({ tailLines: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'read');
      const { sandbox } = await sandboxes.get(namespace, name);
      const text = await sandboxes.logs(sandbox);
      const tail = (req.query as { tailLines?: number }).tailLines;
      const out =
        tail === undefined
          ? text
          : text
              .split('\n')
              .slice(-tail - 1)
              .join('\n');
      return reply.type('text/plain; charset=utf-8').send(out);
    },
  );
}
