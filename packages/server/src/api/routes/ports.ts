import type { IncomingHttpHeaders } from 'node:http';
import { Type } from '@sinclair/typebox';
import { MOAT_API_VERSION, MoatError } from '@moat/core';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ApiContext } from '../context.js';
import { authorize } from '../../auth/authorize.js';
import { pathAfter, relayBodies, relayHttp, relayWebSocket } from '../../relay.js';
import { SANDBOXES } from './sandboxes.js';

/** `8888-<sandbox uid>.<domain>` → the by-uid route below. */
export const PORTS_BY_UID = `/apis/${MOAT_API_VERSION}/sandbox-ports`;

const PortParams = Type.Object({
  namespace: Type.String({ maxLength: 63 }),
  name: Type.String({ maxLength: 253 }),
  port: Type.Integer({ minimum: 1, maximum: 65535 }),
  '*': Type.Optional(Type.String()),
});
const UidParams = Type.Object({
  uid: Type.String({ pattern: '^[0-9a-f-]{36}$' }),
  port: Type.Integer({ minimum: 1, maximum: 65535 }),
  '*': Type.Optional(Type.String()),
});

/**
 * Port exposure: HTTP and WebSocket to a port a process listens on inside a
 * sandbox, through the API server (authenticated like every call) and the
 * sandbox's agent (relay.ts).
 */
export function portRoutes(app: FastifyInstance, ctx: ApiContext) {
  relayBodies(app);

  const byName = async (req: FastifyRequest) => {
    const { namespace, name, port } = req.params as { namespace: string; name: string; port: number };
    authorize(req.principal, namespace, 'write');
    const target = await ctx.backend.sandboxes.running(namespace, name);
    return { ...target, port, path: pathAfter(req, `${SANDBOXES.replace(':namespace', namespace)}/${name}/ports/${port}`) };
  };
  const byUid = async (req: FastifyRequest) => {
    const { uid, port } = req.params as { uid: string; port: number };
    const found = await ctx.store.getSandboxByUid(uid);
    if (!found) throw new MoatError(404, 'NotFound', `no sandbox with uid ${uid}`);
    const { namespace, name } = found.sandbox.metadata;
    authorize(req.principal, namespace, 'write');
    const target = await ctx.backend.sandboxes.running(namespace, name);
    return { ...target, port, path: pathAfter(req, `${PORTS_BY_UID}/${uid}/${port}`) };
  };

  for (const [base, params, resolve] of [
    [`${SANDBOXES}/:name/ports/:port`, PortParams, byName],
    [`${PORTS_BY_UID}/:uid/:port`, UidParams, byUid],
  ] as const) {
    for (const url of [base, `${base}/*`]) {
      app.route({
        method: ['DELETE', 'PATCH', 'POST', 'PUT', 'OPTIONS'],
        url,
        schema: { hide: true, params },
        handler: async (req, reply) => relayHttp(req, reply, await resolve(req)),
      });
      app.route({
        method: ['GET', 'HEAD'],
        url,
        schema: { tags: ['ports'], summary: 'HTTP or WebSocket to a port inside the sandbox (any method; the path after the port is passed on)', params },
        handler: async (req, reply) => relayHttp(req, reply, await resolve(req)),
        wsHandler: (client, req) => {
          client.pause();
          resolve(req)
            .then((t) => relayWebSocket(client, req, t))
            .catch((err: unknown) => client.close(1011, (err as Error).message.slice(0, 120)));
        },
      });
    }
  }
}

/** `Host: 8888-<uid>.<domain>` routes to that sandbox's port, keeping the request's own path. */
export function rewritePortHost(domain: string): (req: { url?: string; headers: IncomingHttpHeaders }) => string {
  const suffix = `.${domain.toLowerCase()}`;
  return (req) => {
    const host = (req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '');
    const url = req.url ?? '/';
    if (!host.endsWith(suffix)) return url;
    const m = /^(\d{1,5})-([0-9a-f-]{36})$/.exec(host.slice(0, -suffix.length));
    return m ? `${PORTS_BY_UID}/${m[2]}/${m[1]}${url.startsWith('/') ? url : `/${url}`}` : url;
  };
}
