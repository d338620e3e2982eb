import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { Type, type Static } from '@sinclair/typebox';
import { assertName, badRequest } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../api/context.js';
import { authorize } from '../auth/authorize.js';
import type { Principal } from '../auth/keys.js';
import { controlPlaneErrorHandler } from './control-plane.js';
import { homeNamespace, type E2bSandboxes } from './sandboxes.js';
import { TemplateBuilds, type Build, type LogEntry, type StartRequest } from './template-builds.js';
import { HASH } from './template-dockerfile.js';
import { TemplateFiles } from './template-files.js';

const UPLOADS = '/e2b/template-files';
const TemplateID = Type.String({ minLength: 1, maxLength: 63 });
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const Tag = Type.String({ pattern: TAG.source });
const RequestBody = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 192 })),
    alias: Type.Optional(Type.String({ minLength: 1, maxLength: 192 })),
    tags: Type.Optional(Type.Array(Tag, { maxItems: 16 })),
    cpuCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    memoryMB: Type.Optional(Type.Integer({ minimum: 128, maximum: 1 << 20 })),
    minFreeDiskMb: Type.Optional(Type.Integer({ minimum: 0 })),
    teamID: Type.Optional(Type.String({ maxLength: 128 })),
  },
  { additionalProperties: false },
);
const Step = Type.Object(
  {
    type: Type.String({ minLength: 1, maxLength: 32 }),
    args: Type.Optional(Type.Array(Type.String({ maxLength: 65536 }), { maxItems: 256 })),
    filesHash: Type.Optional(Type.String({ maxLength: 128 })),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: true },
);
const StartBody = Type.Object(
  {
    fromImage: Type.Optional(Type.String({ maxLength: 255 })),
    fromTemplate: Type.Optional(Type.String({ maxLength: 253 })),
    fromImageRegistry: Type.Optional(Type.Unknown()),
    startCmd: Type.Optional(Type.String({ maxLength: 32768 })),
    readyCmd: Type.Optional(Type.String({ maxLength: 32768 })),
    steps: Type.Optional(Type.Array(Step, { maxItems: 1024 })),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
const BuildParams = Type.Object({ templateID: TemplateID, buildID: Type.String({ format: 'uuid' }) });
const FileParams = Type.Object({ templateID: TemplateID, hash: Type.String({ pattern: HASH.source }) });
const StatusQuery = Type.Object(
  {
    logsOffset: Type.Optional(Type.Integer({ minimum: 0 })),
    limit: Type.Optional(Type.Integer({ minimum: 0, maximum: 10000 })),
    level: Type.Optional(Type.Union(['debug', 'info', 'warn', 'error'].map((l) => Type.Literal(l)))),
  },
  { additionalProperties: false },
);
const LEVELS = ['debug', 'info', 'warn', 'error'];

/**
 * E2B's template builds (`Template.build` of the e2b SDKs): request a build,
 * upload the COPY steps' files, start it, poll its status and log. The
 * result is a SandboxTemplate of the caller's namespace, named after the
 * template, that `Sandbox.create(name)` claims from. See docs/e2b.md.
 */
export async function templateBuildRoutes(app: FastifyInstance, ctx: ApiContext, e2b: E2bSandboxes): Promise<void> {
  const files = new TemplateFiles(join(ctx.images.content.dir, 'e2b-files'), ctx.limits.maxImageUploadBytes);
  const builds = new TemplateBuilds(ctx.images, ctx.backend.templates, files, app.log);
  app.addHook('onClose', async () => builds.close());
  app.setErrorHandler(controlPlaneErrorHandler);
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  const schema = (summary: string, extra: Record<string, unknown> = {}) => ({ tags: ['e2b'], summary, ...extra });
  const readable = (p: Principal) => (ns: string) => authorize(p, ns, 'read', false);

  app.post('/v3/templates', { schema: schema('E2B: request a template build', { body: RequestBody }) }, async (req, reply) => {
    const body = req.body as Static<typeof RequestBody>;
    const given = body.name ?? body.alias;
    if (!given) throw badRequest('name is required');
    const [name, tag] = given.split(/:(?=[^:]*$)/) as [string, string?];
    const templateID = e2b.moatTemplate(assertName(name, 'template name'));
    const tags = [...new Set([...(tag ? [tag] : []), ...(body.tags ?? [])])];
    if (tags.some((t) => !TAG.test(t))) throw badRequest(`bad tag in ${JSON.stringify(given)}`);
    const b = await builds.request(templateNamespace(req.principal), templateID, tags, {
      ...(body.cpuCount ? { cpuCount: body.cpuCount } : {}),
      ...(body.memoryMB ? { memoryMB: body.memoryMB } : {}),
    });
    return reply.status(202).send({ templateID, buildID: b.buildID, names: [name], aliases: [name], tags, public: false });
  });

  app.get(
    '/templates/:templateID/files/:hash',
    { schema: schema('E2B: whether a COPY step’s files are here, else where to upload them', { params: FileParams }) },
    async (req, reply) => {
      const { hash } = req.params as Static<typeof FileParams>;
      const namespace = templateNamespace(req.principal);
      if (await files.present(namespace, hash)) return reply.status(201).send({ present: true });
      const base = `${req.protocol}://${req.host}`;
      return reply.status(201).send({ present: false, url: `${base}${UPLOADS}/${files.grant(namespace, hash)}` });
    },
  );

  // The SDK PUTs without its API key: the one-time token in the path is the authorization (spent before it is ever logged).
  app.put(
    `${UPLOADS}/:token`,
    {
      config: { ownAuth: true },
      schema: schema('E2B: upload a COPY step’s files (a gzip tar), to the link the files call gave', {
        params: Type.Object({ token: Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }) }),
      }),
    },
    async (req, reply) => {
      if (!req.body) throw badRequest('send the files as the request body');
      await files.receive((req.params as { token: string }).token, req.body as Readable, Number(req.headers['content-length'] ?? NaN));
      return reply.status(200).send();
    },
  );

  app.post(
    '/v2/templates/:templateID/builds/:buildID',
    { schema: schema('E2B: start a requested build', { params: BuildParams, body: StartBody }) },
    async (req, reply) => {
      const { templateID, buildID } = req.params as Static<typeof BuildParams>;
      const b = builds.find((ns) => authorize(req.principal, ns, 'write', false), templateID, buildID);
      await builds.start(b, req.body as StartRequest);
      return reply.status(202).send();
    },
  );

  app.get(
    '/templates/:templateID/builds/:buildID/status',
    { schema: schema('E2B: a build’s status and its log from an offset', { params: BuildParams, querystring: StatusQuery }) },
    async (req) => {
      const { templateID, buildID } = req.params as Static<typeof BuildParams>;
      const q = req.query as Static<typeof StatusQuery>;
      const b = builds.find(readable(req.principal), templateID, buildID);
      const entries = logs(b, q.level).slice(q.logsOffset ?? 0);
      return {
        templateID,
        buildID,
        status: b.status,
        logEntries: q.limit !== undefined ? entries.slice(0, q.limit) : entries,
        logs: [],
        ...(b.reason ? { reason: { ...b.reason, logEntries: b.logs.slice(-20) } } : {}),
      };
    },
  );

  app.get(
    '/templates/aliases/:alias',
    { schema: schema('E2B: whether a template name exists', { params: Type.Object({ alias: TemplateID }) }) },
    async (req) => {
      const templateID = e2b.moatTemplate((req.params as { alias: string }).alias);
      await ctx.backend.templates.get(templateNamespace(req.principal, 'read'), templateID);
      return { templateID, public: false };
    },
  );
}

const logs = (b: Build, level: string | undefined): LogEntry[] => (level ? b.logs.filter((e) => LEVELS.indexOf(e.level) >= LEVELS.indexOf(level)) : b.logs);

/** The key's home namespace (where its E2B sandboxes go), if it may `verb` there. */
function templateNamespace(p: Principal, verb: 'read' | 'write' = 'write'): string {
  const ns = homeNamespace(p);
  authorize(p, ns, verb);
  return ns;
}
