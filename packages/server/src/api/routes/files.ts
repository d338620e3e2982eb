import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import { MoatError, badRequest, sandboxPath, tooLarge } from '@moat/core';
import { AgentError, type Entry, type SandboxAgent } from '@moat/runtime';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import tar from 'tar-stream';
import type { ApiContext } from '../context.js';
import { authorize } from '../../auth/authorize.js';
import { NameParams, SANDBOXES } from './sandboxes.js';

const FILES = `${SANDBOXES}/:name/files`;
const PathQuery = Type.Object(
  { path: Type.String({ minLength: 1, maxLength: 4096 }), user: Type.Optional(Type.String({ maxLength: 64 })) },
  { additionalProperties: false },
);

const ERRNO_STATUS: Record<string, [number, string]> = {
  ENOENT: [404, 'NotFound'],
  EACCES: [403, 'Forbidden'],
  EPERM: [403, 'Forbidden'],
  EISDIR: [400, 'BadRequest'],
  ENOTDIR: [400, 'BadRequest'],
  EINVAL: [400, 'BadRequest'],
  EEXIST: [409, 'AlreadyExists'],
  ENOTEMPTY: [409, 'Conflict'],
  ENOSPC: [507, 'InsufficientStorage'],
  EDQUOT: [507, 'InsufficientStorage'],
  EROFS: [403, 'Forbidden'],
};

/** Agent errno → HTTP, with the sandbox path (never a host path) in the message. */
function fileError(err: unknown, path: string): unknown {
  if (!(err instanceof AgentError)) return err;
  const [code, reason] = ERRNO_STATUS[err.code] ?? [502, 'SandboxUnavailable'];
  const what: Record<string, string> = {
    ENOENT: 'no such file or directory',
    EISDIR: 'is a directory',
    ENOTDIR: 'not a directory',
    EEXIST: 'already exists',
    ENOTEMPTY: 'directory not empty (use recursive=true)',
    ENOSPC: 'the sandbox disk is full',
  };
  return new MoatError(code, reason, `${path}: ${what[err.code] ?? err.message}`);
}

export const entryJson = (e: Entry) => ({
  name: e.name,
  path: e.path,
  type: e.type,
  size: e.size,
  mode: e.mode.toString(8).padStart(4, '0'),
  mtime: e.mtime.toISOString(),
  uid: e.uid,
  gid: e.gid,
  ...(e.target !== undefined ? { target: e.target } : {}),
});

/** Counts bytes through a stream and fails it past the limit, so an upload over the limit never completes. */
export class ByteLimit extends Transform {
  bytes = 0;
  constructor(private readonly max: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    this.bytes += chunk.length;
    if (this.bytes > this.max) cb(tooLarge(`upload is larger than the limit of ${this.max} bytes`));
    else cb(null, chunk);
  }
}

export function fileRoutes(app: FastifyInstance, ctx: ApiContext) {
  const max = ctx.limits.maxUploadBytes;

  // Uploads stream straight to the sandbox: never buffered whole in the server.
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  async function target(req: FastifyRequest, verb: 'read' | 'write') {
    const { namespace, name } = req.params as { namespace: string; name: string };
    authorize(req.principal, namespace, verb);
    const { agent } = await ctx.backend.sandboxes.running(namespace, name);
    const q = req.query as { path?: string; user?: string };
    return { agent, path: q.path !== undefined ? sandboxPath(q.path) : '/', user: q.user ?? 'root' };
  }

  function checkLength(req: FastifyRequest) {
    const len = Number(req.headers['content-length'] ?? NaN);
    if (len > max) throw tooLarge(`upload of ${len} bytes is larger than the limit of ${max} bytes`);
  }

  app.get(`${FILES}/content`, { schema: { tags: ['files'], summary: 'Read a file', params: NameParams, querystring: PathQuery } }, async (req, reply) => {
    const { agent, path, user } = await target(req, 'read');
    const it = agent.readFile(path, { user })[Symbol.asyncIterator]();
    // Pull the first chunk before answering so a missing file is a 404, not a broken 200.
    const first = await it.next().catch((err) => Promise.reject(fileError(err, path)));
    const body = Readable.from(
      (async function* () {
        try {
          if (!first.done) yield first.value as Buffer;
          for (let n = await it.next(); !n.done; n = await it.next()) yield n.value as Buffer;
        } finally {
          await it.return?.(); // a client that hangs up mid-download must release the agent connection
        }
      })(),
    );
    return reply.type('application/octet-stream').send(body);
  });

  app.put(
    `${FILES}/content`,
    {
      schema: {
        tags: ['files'],
        summary: 'Write a file from the raw body (parents created; replaced atomically)',
        params: NameParams,
        querystring: Type.Object({ ...PathQuery.properties, mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$' })) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      checkLength(req);
      const { agent, path, user } = await target(req, 'write');
      if (path === '/') throw badRequest('cannot write to /');
      const mode = parseInt((req.query as { mode?: string }).mode ?? '0644', 8);
      // Write beside the target, then rename: a failed or oversized upload never clobbers the old file.
      const tmp = posix.join(posix.dirname(path), `.moat-upload-${randomBytes(6).toString('hex')}`);
      try {
        const limit = new ByteLimit(max);
        const source = req.body as Readable;
        source.on('error', (e) => limit.destroy(e));
        await agent.writeFile(tmp, source.pipe(limit), { mode, user });
        if (limit.bytes > max) throw tooLarge(`upload is larger than the limit of ${max} bytes`);
        return entryJson(await agent.rename(tmp, path, { user }));
      } catch (err) {
        void reply.header('connection', 'close'); // the body may be half-read
        await agent.remove(tmp, { user: 'root' }).catch(() => {});
        throw fileError(err, path);
      }
    },
  );

  app.get(`${FILES}/list`, { schema: { tags: ['files'], summary: 'List a directory', params: NameParams, querystring: PathQuery } }, async (req) => {
    const { agent, path, user } = await target(req, 'read');
    const items = await agent.list(path, { user }).catch((err) => Promise.reject(fileError(err, path)));
    return { items: items.sort((a, b) => a.name.localeCompare(b.name)).map(entryJson) };
  });

  app.get(
    `${FILES}/stat`,
    { schema: { tags: ['files'], summary: 'Stat a path (a final symlink is not followed)', params: NameParams, querystring: PathQuery } },
    async (req) => {
      const { agent, path, user } = await target(req, 'read');
      return entryJson(await agent.stat(path, { user }).catch((err) => Promise.reject(fileError(err, path))));
    },
  );

  app.post(
    `${FILES}/mkdir`,
    {
      schema: {
        tags: ['files'],
        summary: 'Make a directory',
        params: NameParams,
        querystring: Type.Object({ ...PathQuery.properties, parents: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const { agent, path, user } = await target(req, 'write');
      const parents = (req.query as { parents?: boolean }).parents ?? true;
      const e = await agent.mkdir(path, { parents, user }).catch((err) => Promise.reject(fileError(err, path)));
      return reply.status(201).send(entryJson(e));
    },
  );

  app.delete(
    FILES,
    {
      schema: {
        tags: ['files'],
        summary: 'Remove a file or directory',
        params: NameParams,
        querystring: Type.Object({ ...PathQuery.properties, recursive: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const { agent, path, user } = await target(req, 'write');
      if (path === '/') throw badRequest('refusing to remove /');
      await agent
        .remove(path, { recursive: (req.query as { recursive?: boolean }).recursive ?? false, user })
        .catch((err) => Promise.reject(fileError(err, path)));
      return reply.status(204).send();
    },
  );

  app.post(
    `${FILES}/rename`,
    {
      schema: {
        tags: ['files'],
        summary: 'Rename (move) a path',
        params: NameParams,
        querystring: Type.Object({ user: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: false }),
        body: Type.Object({ from: Type.String({ maxLength: 4096 }), to: Type.String({ maxLength: 4096 }) }, { additionalProperties: false }),
      },
    },
    async (req) => {
      const { agent, user } = await target(req, 'write');
      const body = req.body as { from: string; to: string };
      const from = sandboxPath(body.from, 'from');
      const to = sandboxPath(body.to, 'to');
      return entryJson(await agent.rename(from, to, { user }).catch((err) => Promise.reject(fileError(err, from))));
    },
  );

  app.get(
    `${FILES}/archive`,
    { schema: { tags: ['files'], summary: 'Download a tree as a tar archive', params: NameParams, querystring: PathQuery } },
    async (req, reply) => {
      const { agent, path, user } = await target(req, 'read');
      const root = await agent.stat(path, { user }).catch((err) => Promise.reject(fileError(err, path)));
      const pack = tar.pack();
      void packTree(agent, pack, path, root, user).then(
        () => pack.finalize(),
        (err) => pack.destroy(err as Error),
      );
      return reply.type('application/x-tar').send(pack);
    },
  );

  app.put(
    `${FILES}/archive`,
    {
      schema: { tags: ['files'], summary: 'Upload a tar archive and extract it under path', params: NameParams, querystring: PathQuery },
    },
    async (req, reply) => {
      checkLength(req);
      const { agent, path, user } = await target(req, 'write');
      const limit = new ByteLimit(max);
      const extract = tar.extract();
      let files = 0;
      let bytes = 0;
      extract.on('entry', (header, stream, next) => {
        stream.on('error', () => {}); // destroying the extractor errors every open entry; the pipeline reports it once
        const rel = header.name.replace(/^\.?\/+/, '');
        const done = (err?: unknown) => (err ? extract.destroy(err as Error) : next());
        if (rel === '' || rel === '.') return stream.resume().on('end', () => done());
        let dest: string;
        try {
          // Concatenate, not join: join would fold a "../" away instead of letting sandboxPath reject it.
          dest = sandboxPath(`${path}/${rel}`, `archive entry "${header.name}"`);
        } catch (err) {
          return done(err);
        }
        if (header.type === 'directory') {
          stream.resume();
          agent.mkdir(dest, { parents: true, user, mode: header.mode ?? 0o755 }).then(
            () => done(),
            (e) => done(fileError(e, dest)),
          );
        } else if (header.type === 'file' || header.type === 'contiguous-file') {
          files++;
          bytes += header.size ?? 0;
          agent.writeFile(dest, stream as unknown as Readable, { mode: (header.mode ?? 0o644) & 0o7777, user }).then(
            () => done(),
            (e) => done(fileError(e, dest)),
          );
        } else {
          stream.resume().on('end', () => done()); // links and devices are not recreated
        }
      });
      await pipeline(req.body as Readable, limit, extract).catch((err) => {
        // The body was abandoned half-read: this connection cannot carry another request.
        void reply.header('connection', 'close');
        throw err instanceof MoatError ? err : badRequest(`invalid tar archive: ${(err as Error).message}`);
      });
      return { files, bytes };
    },
  );
}

async function packTree(agent: SandboxAgent, pack: tar.Pack, base: string, root: Entry, user: string) {
  const add = async (entry: Entry, abs: string, rel: string): Promise<void> => {
    const common = { name: rel, mode: entry.mode, mtime: entry.mtime, uid: entry.uid, gid: entry.gid };
    if (entry.type === 'dir') {
      if (rel) pack.entry({ ...common, type: 'directory' });
      for (const child of await agent.list(abs, { user })) {
        await add(child, posix.join(abs, child.name), rel ? `${rel}/${child.name}` : child.name);
      }
    } else if (entry.type === 'symlink') {
      pack.entry({ ...common, type: 'symlink', linkname: entry.target ?? '' });
    } else if (entry.type === 'file') {
      const sink = pack.entry({ ...common, type: 'file', size: entry.size });
      await pipeline(Readable.from(agent.readFile(abs, { user })), sink);
    }
  };
  await add(root, base, root.type === 'dir' ? '' : posix.basename(base));
}
