import { posix } from 'node:path';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Type } from '@sinclair/typebox';
import { MoatError, tooLarge } from '@moat/core';
import { AgentError } from '@moat/runtime';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ApiContext } from '../api/context.js';
import { ByteLimit } from '../api/routes/files.js';
import { ENVD_PREFIX, SandboxIdParams } from './data-plane.js';
import type { EnvdRoutes } from './envd-types.js';
import type { E2bSandboxes } from './sandboxes.js';

const FilesQuery = Type.Object(
  {
    path: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    username: Type.Optional(Type.String({ maxLength: 32 })),
    signature: Type.Optional(Type.String({ maxLength: 256 })),
    signature_expiration: Type.Optional(Type.Integer()),
  },
  { additionalProperties: false },
);
type Query = { path?: string; username?: string };

const httpError = (err: unknown, path: string) => {
  if (!(err instanceof AgentError)) return err;
  const status: Record<string, number> = { ENOENT: 404, EISDIR: 400, ENOTDIR: 400, EACCES: 401, EPERM: 401, ENOSPC: 507, EDQUOT: 507 };
  return new MoatError(status[err.code] ?? 502, err.code, `${path}: ${err.message}`);
};

/** The upload's bytes, unzipped if the SDK gzipped them, failing past the server's upload limit. */
function uploadBody(req: FastifyRequest, max: number): Readable {
  const len = Number(req.headers['content-length'] ?? NaN);
  if (len > max) throw tooLarge(`upload of ${len} bytes is larger than the limit of ${max} bytes`);
  let body = (req.body as Readable).pipe(new ByteLimit(max));
  if (req.headers['content-encoding'] === 'gzip') body = body.pipe(createGunzip()).pipe(new ByteLimit(max));
  return body;
}

/** The files of an upload: a multipart form (field `file`, each part named by its path) or one raw body for `?path=`. */
async function* uploadedFiles(req: FastifyRequest, body: Readable, path: string | undefined): AsyncGenerator<{ path: string; data: Readable }> {
  const type = req.headers['content-type'] ?? '';
  if (!type.startsWith('multipart/form-data')) {
    if (!path) throw new MoatError(400, 'BadRequest', 'path is required for a raw upload');
    yield { path, data: body };
    return;
  }
  // Node's own multipart parser (undici's), bounded by the upload limit.
  const form = await new Response(Readable.toWeb(body) as ReadableStream, { headers: { 'content-type': type } }).formData();
  for (const part of form.getAll('file')) {
    if (typeof part === 'string') throw new MoatError(400, 'BadRequest', 'form field "file" must be a file');
    yield { path: path ?? part.name, data: Readable.fromWeb(part.stream() as never) };
  }
}

/** envd's plain HTTP side: health, and file download and upload. */
export function filesHttp(scope: FastifyInstance, routes: EnvdRoutes, ctx: ApiContext, e2b: E2bSandboxes) {
  // Uploads are streamed, not parsed; connect+json and JSON keep their parsers.
  scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  const target = (req: FastifyRequest) => routes.target(req, (req.query as Query).username);

  scope.get(`${ENVD_PREFIX}/health`, { schema: { hide: true, params: SandboxIdParams } }, async (req, reply) => {
    const { sandboxId } = req.params as { sandboxId: string };
    // 502 is how the SDK's isRunning() learns that a sandbox is gone.
    const running = await e2b.running(req.principal, sandboxId).then(
      () => true,
      () => false,
    );
    return reply.status(running ? 204 : 502).send();
  });

  scope.get(`${ENVD_PREFIX}/files`, { schema: { hide: true, params: SandboxIdParams, querystring: FilesQuery } }, async (req, reply) => {
    const t = await target(req);
    const path = t.resolve((req.query as Query).path ?? '');
    const it = t.agent.readFile(path, { user: t.user })[Symbol.asyncIterator]();
    // The first chunk comes before the answer, so a missing file is a 404 and not a broken 200.
    const first = await it.next().catch((err: unknown) => Promise.reject(httpError(err, path)));
    const body = Readable.from(
      (async function* () {
        try {
          if (!first.done) yield first.value;
          for (let n = await it.next(); !n.done; n = await it.next()) yield n.value;
        } finally {
          await it.return?.();
        }
      })(),
    );
    return reply.type('application/octet-stream').send(body);
  });

  scope.post(`${ENVD_PREFIX}/files`, { schema: { hide: true, params: SandboxIdParams, querystring: FilesQuery } }, async (req, reply) => {
    const t = await target(req);
    const query = req.query as Query;
    const written = [];
    try {
      for await (const file of uploadedFiles(req, uploadBody(req, ctx.limits.maxUploadBytes), query.path && t.resolve(query.path))) {
        const path = t.resolve(file.path);
        await t.agent.writeFile(path, file.data, { user: t.user }).catch((err: unknown) => Promise.reject(httpError(err, path)));
        written.push({ path, name: posix.basename(path), type: 'file' });
      }
    } catch (err) {
      void reply.header('connection', 'close'); // the body may be half-read
      throw err;
    }
    return written;
  });
}
