import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, MoatError, assertName, badRequest, tooLarge } from '@moat/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authorize, isAdmin, requireAdmin } from '../../auth/authorize.js';
import { dockerConfigLogins } from '../../images/registry-logins.js';
import { toMoatError } from '../errors.js';
import type { ApiContext } from '../context.js';

const V = `/apis/${MOAT_API_VERSION}`;
const IMAGES = `${V}/namespaces/:namespace/images`;
const REGISTRIES = `${V}/namespaces/:namespace/registries`;
const Ns = Type.Object({ namespace: Type.String({ maxLength: 63 }) }, { additionalProperties: false });
const NsName = Type.Object(
  {
    namespace: Type.String({ maxLength: 63 }),
    name: Type.String({ minLength: 1, maxLength: 512, description: 'the image name, URL-encoded (`my-agent:v1`, `registry:5000/app:v1`)' }),
  },
  { additionalProperties: false },
);
const PullBody = Type.Object(
  { reference: Type.String({ minLength: 1, maxLength: 512, description: '`registry/repo:tag` or `registry/repo@sha256:...`' }) },
  { additionalProperties: false },
);
const ImportQuery = Type.Object({ tag: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })) }, { additionalProperties: false });
const BuildQuery = Type.Object(
  {
    tag: Type.String({ minLength: 1, maxLength: 512 }),
    dockerfile: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'path in the context (default Dockerfile)' })),
    target: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    buildArg: Type.Optional(Type.Union([Type.String({ maxLength: 4096 }), Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 64 })])),
  },
  { additionalProperties: false },
);
const PublishBody = Type.Object({ public: Type.Boolean() }, { additionalProperties: false });
const LoginBody = Type.Union([
  Type.Object(
    {
      registry: Type.String({ minLength: 1, maxLength: 255 }),
      username: Type.String({ minLength: 1, maxLength: 255 }),
      password: Type.String({ minLength: 1, maxLength: 8192 }),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    { dockerConfig: Type.String({ minLength: 2, maxLength: 1 << 20, description: 'a docker config.json: its `auths` are imported' }) },
    { additionalProperties: false },
  ),
]);
const RegistryParams = Type.Object(
  { namespace: Type.String({ maxLength: 63 }), registry: Type.String({ minLength: 1, maxLength: 255 }) },
  { additionalProperties: false },
);

const list = (kind: string, items: unknown[]) => ({ apiVersion: MOAT_API_VERSION, kind, items });

/**
 * Images: pull, import, build (each answering a stream of NDJSON progress
 * lines that ends with `{"type":"image",...}` or `{"type":"error",...}`), list,
 * inspect, delete and publish; and a namespace's registry logins.
 */
export function imageRoutes(app: FastifyInstance, ctx: ApiContext) {
  const tags = ['images'];
  const { images } = ctx;
  // Archives and build contexts stream to a file (`receive`), never buffered whole.
  app.addContentTypeParser(['application/x-tar', 'application/gzip', 'application/octet-stream'], (_req, payload, done) => done(null, payload));

  app.get(`${V}/images`, { schema: { tags, summary: 'The images you can start sandboxes from, in every namespace you see' } }, async (req) => {
    const mine = isAdmin(req.principal) ? undefined : [...req.principal.namespaces.keys()];
    return list('ImageList', await images.list(mine));
  });

  app.get(IMAGES, { schema: { tags, summary: "A namespace's images, with those published to all", params: Ns } }, async (req) => {
    const { namespace } = req.params as Static<typeof Ns>;
    authorize(req.principal, namespace, 'read');
    return list('ImageList', await images.list([namespace]));
  });

  app.get(`${IMAGES}/:name`, { schema: { tags, summary: 'Inspect an image: digest, size, layers and its config', params: NsName } }, async (req) => {
    const { namespace, name } = req.params as Static<typeof NsName>;
    authorize(req.principal, namespace, 'read');
    return images.get(namespace, name);
  });

  app.delete(
    `${IMAGES}/:name`,
    { schema: { tags, summary: 'Delete an image name (409 while a sandbox, template or backup uses it)', params: NsName } },
    async (req, reply) => {
      const { namespace, name } = req.params as Static<typeof NsName>;
      authorize(req.principal, namespace, 'write');
      await images.delete(namespace, name);
      return reply.status(204).send();
    },
  );

  app.post(
    `${IMAGES}/:name/publish`,
    { schema: { tags, summary: 'Admins: make an image visible to every namespace (or private again)', params: NsName, body: PublishBody } },
    async (req) => {
      const { namespace, name } = req.params as Static<typeof NsName>;
      authorize(req.principal, namespace, 'write');
      requireAdmin(req.principal, 'publish images');
      return images.publish(namespace, name, (req.body as Static<typeof PublishBody>).public);
    },
  );

  app.post(
    `${IMAGES}/pull`,
    { schema: { tags, summary: 'Pull an image from a registry (streams NDJSON progress)', params: Ns, body: PullBody } },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof Ns>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      const { reference } = req.body as Static<typeof PullBody>;
      return progressStream(req, reply, async (emit, signal) => {
        await images.pull(namespace, reference, { onEvent: emit, signal });
        return images.get(namespace, reference);
      });
    },
  );

  app.post(
    `${IMAGES}/import`,
    {
      schema: {
        tags,
        summary: 'Import a `docker save` or OCI-layout archive sent as the body (streams NDJSON progress)',
        params: Ns,
        querystring: ImportQuery,
      },
    },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof Ns>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      const { tag } = req.query as Static<typeof ImportQuery>;
      const file = await receive(req, ctx, 'archive');
      return progressStream(req, reply, async (emit) => images.importArchive(namespace, file.path, { ...(tag ? { tag } : {}), onEvent: emit }), file.cleanup);
    },
  );

  app.post(
    `${IMAGES}/build`,
    {
      schema: {
        tags,
        summary: 'Build an image from a Dockerfile; the body is the build context as a tar (streams NDJSON steps and log)',
        params: Ns,
        querystring: BuildQuery,
      },
    },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof Ns>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      const q = req.query as Static<typeof BuildQuery>;
      const buildArgs = Object.fromEntries(
        [q.buildArg ?? []].flat().map((kv) => {
          const i = kv.indexOf('=');
          if (i < 1) throw badRequest(`buildArg "${kv}" is not KEY=VALUE`);
          return [kv.slice(0, i), kv.slice(i + 1)];
        }),
      );
      const file = await receive(req, ctx, 'build context');
      return progressStream(
        req,
        reply,
        async (emit, signal) => {
          await images.build(
            namespace,
            { contextTar: file.path, tag: q.tag, ...(q.dockerfile ? { dockerfile: q.dockerfile } : {}), ...(q.target ? { target: q.target } : {}), buildArgs },
            { emit, signal },
          );
          return images.get(namespace, q.tag);
        },
        file.cleanup,
      );
    },
  );

  app.post(`${V}/images/gc`, { schema: { tags, summary: 'Admins: collect unused images and layers now' } }, async (req) => {
    requireAdmin(req.principal, 'collect images');
    return images.collect();
  });

  app.get(REGISTRIES, { schema: { tags, summary: "A namespace's registry logins (never their passwords)", params: Ns } }, async (req) => {
    const { namespace } = req.params as Static<typeof Ns>;
    authorize(req.principal, namespace, 'read');
    return list('RegistryLoginList', await images.logins.list(namespace));
  });

  app.post(
    REGISTRIES,
    { schema: { tags, summary: 'Log in to a registry (checked against it first), or import the logins of a docker config.json', params: Ns, body: LoginBody } },
    async (req, reply) => {
      const { namespace } = req.params as Static<typeof Ns>;
      authorize(req.principal, assertName(namespace, 'namespace'), 'write');
      const body = req.body as Static<typeof LoginBody>;
      const logins = 'dockerConfig' in body ? dockerConfigLogins(body.dockerConfig) : [body];
      const out = [];
      for (const l of logins) out.push(await images.login(namespace, l.registry, l.username, l.password, { check: !('dockerConfig' in body) }));
      return reply.status(201).send(list('RegistryLoginList', out));
    },
  );

  app.delete(`${REGISTRIES}/:registry`, { schema: { tags, summary: 'Log out of a registry', params: RegistryParams } }, async (req, reply) => {
    const { namespace, registry } = req.params as Static<typeof RegistryParams>;
    authorize(req.principal, namespace, 'write');
    await images.logins.logout(namespace, registry);
    return reply.status(204).send();
  });
}

type Emit = (event: object) => void;

/**
 * Runs `work`, answering its errors as HTTP errors until its first progress
 * event (a bad reference, a refused login, a missing tag are 4xx/5xx), and
 * as a final `error` line after that.
 */
async function progressStream(
  req: FastifyRequest,
  reply: FastifyReply,
  work: (emit: Emit, signal: AbortSignal) => Promise<object | object[]>,
  cleanup?: () => Promise<void>,
) {
  const out = new PassThrough();
  const abort = new AbortController();
  // The response's close, not the request's: that one fires as soon as the body is read.
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  let started!: () => void;
  const first = new Promise<void>((resolve) => (started = resolve));
  const emit: Emit = (event) => {
    started();
    out.write(`${JSON.stringify(event)}\n`);
  };
  const done = work(emit, abort.signal).finally(() => cleanup?.());
  const failedEarly = await Promise.race([
    first.then(() => undefined),
    done.then(
      () => undefined,
      (err: unknown) => err,
    ),
  ]);
  if (failedEarly) throw failedEarly;
  done.then(
    (result) => out.end(`${JSON.stringify({ type: 'image', image: result })}\n`),
    (err: unknown) => {
      const e = toMoatError(err, req);
      if (e.code >= 500 && !(err instanceof MoatError)) req.log.error({ err }, 'image operation failed');
      out.end(`${JSON.stringify({ type: 'error', code: e.code, reason: e.reason, message: e.message })}\n`);
    },
  );
  return reply.type('application/x-ndjson').send(out);
}

/** The request body into a file under the image store's tmp/ (bounded by the server's upload limit). */
async function receive(req: FastifyRequest, ctx: ApiContext, what: string): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const max = ctx.limits.maxImageUploadBytes;
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > max) throw tooLarge(`the ${what} (${declared} bytes) is larger than the limit of ${max} bytes`);
  const dir = await ctx.images.content.tmpDir();
  const path = join(dir, 'upload');
  let n = 0;
  const limit = new Transform({
    transform(chunk: Buffer, _e, cb) {
      n += chunk.length;
      if (n > max) cb(tooLarge(`the ${what} is larger than the limit of ${max} bytes`));
      else cb(null, chunk);
    },
  });
  try {
    if (!req.body) throw badRequest(`send the ${what} as the request body`);
    await pipeline(req.body as Readable, limit, createWriteStream(path));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err instanceof MoatError ? err : badRequest(`the ${what} could not be received: ${(err as Error).message}`);
  }
  return { path, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
