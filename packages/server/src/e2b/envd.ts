import { posix } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { MoatError, sandboxPath } from '@moat/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ApiContext } from '../api/context.js';
import { ConnectError, ServerStream, STREAM_CONTENT_TYPE, httpStatus, readEnvelope, sendUnaryError, toConnectError } from './connect-rpc.js';
import { ENVD_PREFIX, SandboxIdParams } from './data-plane.js';
import type { EnvdRoutes } from './envd-types.js';
import { filesystemService } from './envd-filesystem.js';
import { filesHttp } from './envd-files.js';
import { processService } from './envd-process.js';
import type { E2bSandboxes } from './sandboxes.js';

/** envd's default user: E2B images run commands as `user` (Moat's images have that account too). */
const DEFAULT_USER = 'user';
const USERNAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/** `Authorization: Basic base64("<user>:")` picks the user a call runs as (E2B's `opts.user`). */
function userOf(req: FastifyRequest, fromQuery: string | undefined): string {
  const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
  const user = fromQuery || (basic ? Buffer.from(basic, 'base64').toString('utf8').split(':')[0] : '') || DEFAULT_USER;
  if (!USERNAME.test(user)) throw new ConnectError('invalid_argument', `invalid user name "${user}"`);
  return user;
}

/**
 * envd, E2B's in-sandbox daemon, served by Moat on the host over each
 * sandbox's agent (exec and files), for every runtime class alike.
 */
export function envdRoutes(scope: FastifyInstance, ctx: ApiContext, e2b: E2bSandboxes) {
  scope.addContentTypeParser(STREAM_CONTENT_TYPE, { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const routes: EnvdRoutes = {
    async target(req, username) {
      const { sandboxId } = req.params as { sandboxId: string };
      const { e2b: s, sandbox, agent } = await e2b.running(req.principal, sandboxId);
      const user = userOf(req, username);
      const home = user === 'root' ? '/root' : `/home/${user}`;
      return {
        e2b: s,
        sandbox,
        agent,
        user,
        // `..` is folded here and everything is resolved inside the sandbox's root by its agent, so no path leaves it.
        resolve: (path, what = 'path') => sandboxPath(posix.resolve(home, path.startsWith('~/') ? path.slice(2) : path), what),
      };
    },
    unary(method, schema, fn) {
      scope.post(`${ENVD_PREFIX}/${method}`, { schema: { hide: true, params: SandboxIdParams, body: schema } }, async (req, reply) => {
        return reply.type('application/json').send(await fn(await routes.target(req), req.body as never, req));
      });
    },
    stream(method, schema, fn) {
      scope.post(`${ENVD_PREFIX}/${method}`, { schema: { hide: true, params: SandboxIdParams } }, async (req, reply) => {
        const stream = new ServerStream();
        void (async () => {
          const body = readEnvelope(req.body);
          const invalid = Value.Errors(schema, body).First();
          if (invalid) throw new ConnectError('invalid_argument', `invalid request: ${invalid.path || '/'} ${invalid.message}`);
          await fn(await routes.target(req), body as never, stream, req);
        })().catch((err: unknown) => {
          if (toConnectError(err).code === 'internal') req.log.error({ err }, 'envd stream failed');
          stream.end(err);
        });
        return stream.reply(reply);
      });
    },
  };

  processService(routes, ctx);
  filesystemService(routes);
  filesHttp(scope, routes, ctx, e2b);

  scope.all(`${ENVD_PREFIX}/*`, { schema: { hide: true } }, async (req) => {
    throw new ConnectError('unimplemented', `envd has no ${req.method} ${(req.params as { '*': string })['*']} here`);
  });
}

/** Errors in the shapes the SDK reads: Connect errors for RPC, envd's `{code, message}` for its HTTP routes. */
export function envdErrorHandler(err: Error, req: FastifyRequest, reply: FastifyReply) {
  const e = toConnectError(err);
  if (e.code === 'internal') req.log.error({ err }, 'envd request failed');
  if (req.headers['content-type']?.startsWith(STREAM_CONTENT_TYPE)) {
    const stream = new ServerStream();
    stream.end(e);
    return stream.reply(reply);
  }
  if (/\/(process\.Process|filesystem\.Filesystem)\//.test(req.url)) return sendUnaryError(reply, e);
  const code = err instanceof MoatError ? err.code : httpStatus(e.code);
  return reply.status(code).type('application/json').send({ code, message: e.message });
}
