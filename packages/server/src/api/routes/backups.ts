import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, assertName, badRequest } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import { assertOwned, authorize } from '../../auth/authorize.js';
import { requireCapability } from '../../backends/types.js';
import type { ApiContext } from '../context.js';
import { assertBackupId } from '../../backups/service.js';

const NS = `/apis/${MOAT_API_VERSION}/namespaces/:namespace`;
const NsParams = Type.Object({ namespace: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const VolumeParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), name: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const IdParams = Type.Object({ namespace: Type.String({ maxLength: 63 }), id: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const CreateBody = Type.Object(
  {
    volume: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
    sandbox: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: "back up this sandbox's volume (or, with rootfs, its writable layer)" })),
    rootfs: Type.Optional(
      Type.Boolean({ description: "with sandbox: back up the sandbox's writable layer (what it changed outside its volume), not its volume" }),
    ),
  },
  { additionalProperties: false },
);
const RestoreBody = Type.Object(
  {
    volume: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'a volume backup: the new volume to make' })),
    sandbox: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'a writable-layer (rootfs) backup: the new sandbox to make' })),
  },
  { additionalProperties: false },
);
const ListQuery = Type.Object({ volume: Type.Optional(Type.String({ maxLength: 63 })) }, { additionalProperties: false });

const list = (items: unknown[]) => ({ apiVersion: MOAT_API_VERSION, kind: 'BackupList', items });

/** Backups of volumes and of sandboxes' writable layers in the object store; restores into new volumes and sandboxes (docs/lifecycle.md). */
export function backupRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { backups } = ctx;
  const tags = ['backups'];

  const create = async (namespace: string, volume: string) => {
    await assertOwned(ctx.identity, namespace);
    return backups.create(namespace, assertName(volume, 'volume'));
  };

  app.get(`${NS}/backups`, { schema: { tags, summary: "List a namespace's backups", params: NsParams, querystring: ListQuery } }, async (req) => {
    const { namespace } = req.params as Static<typeof NsParams>;
    authorize(req.principal, namespace, 'read');
    return list(await backups.list(namespace, (req.query as Static<typeof ListQuery>).volume));
  });

  app.post(
    `${NS}/backups`,
    {
      schema: {
        tags,
        summary: "Back up a volume, a sandbox's volume, or (rootfs) a sandbox's writable layer: consistent, zstd, SHA-256",
        params: NsParams,
        body: CreateBody,
      },
    },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof NsParams>;
      authorize(req.principal, namespace, 'write');
      const body = req.body as Static<typeof CreateBody>;
      if (!body.volume === !body.sandbox) throw badRequest('give exactly one of volume or sandbox');
      if (body.rootfs && !body.sandbox) throw badRequest('rootfs backs up a sandbox\'s writable layer: give {"sandbox": NAME, "rootfs": true}');
      if (body.rootfs) {
        requireCapability(ctx.backend, 'layerBackups', "back up a sandbox's writable layer");
        await assertOwned(ctx.identity, namespace);
        return reply.status(201).send(await backups.createRootfs(namespace, assertName(body.sandbox!, 'sandbox')));
      }
      const volume = body.volume ?? (await backups.volumeOfSandbox(namespace, assertName(body.sandbox!, 'sandbox')));
      return reply.status(201).send(await create(namespace, volume));
    },
  );

  app.post(`${NS}/volumes/:name/backups`, { schema: { tags, summary: 'Back up a volume', params: VolumeParams } }, async (req, reply) => {
    const { namespace, name } = req.params as Static<typeof VolumeParams>;
    authorize(req.principal, namespace, 'write');
    return reply.status(201).send(await create(namespace, name));
  });

  app.get(`${NS}/backups/:id`, { schema: { tags, summary: 'Get a backup', params: IdParams } }, async (req) => {
    const { namespace, id } = req.params as Static<typeof IdParams>;
    authorize(req.principal, namespace, 'read');
    return backups.get(namespace, assertBackupId(id));
  });

  app.delete(`${NS}/backups/:id`, { schema: { tags, summary: 'Delete a backup from the store', params: IdParams } }, async (req, reply) => {
    const { namespace, id } = req.params as Static<typeof IdParams>;
    authorize(req.principal, namespace, 'write');
    await backups.delete(namespace, assertBackupId(id));
    return reply.status(204).send();
  });

  app.post(
    `${NS}/backups/:id/restore`,
    {
      schema: {
        tags,
        summary: 'Restore a volume backup into a new volume, or a writable-layer backup into a new sandbox (its checksum checked first)',
        params: IdParams,
        body: RestoreBody,
      },
    },
    async (req, reply) => {
      const { namespace, id } = req.params as Static<typeof IdParams>;
      authorize(req.principal, namespace, 'write');
      await assertOwned(ctx.identity, namespace);
      const { volume, sandbox } = req.body as Static<typeof RestoreBody>;
      if (!volume === !sandbox) throw badRequest('give exactly one of volume (a volume backup) or sandbox (a writable-layer backup)');
      if (sandbox) return reply.status(201).send(await backups.restoreSandbox(namespace, assertBackupId(id), assertName(sandbox, 'sandbox')));
      return reply.status(201).send(await backups.restore(namespace, assertBackupId(id), assertName(volume!, 'volume')));
    },
  );
}
