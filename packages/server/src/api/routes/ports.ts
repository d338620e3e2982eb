import { request, type IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { Type } from '@sinclair/typebox';
import { MOAT_API_VERSION, MoatError, type Sandbox } from '@moat/core';
import { AgentError, type SandboxAgent } from '@moat/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import WebSocket from 'ws';
import type { ApiContext } from '../context.js';
import { authorize } from '../authorize.js';
import { SANDBOXES } from './sandboxes.js';

/** `8888-<sandbox uid>.<domain>` → the by-uid route below. */
export const PORTS_BY_UID = `/apis/${MOAT_API_VERSION}/sandbox-ports`;

const PortParams = Type.Object({
  namespace: Type.String({ maxLength: 63 }),
  name: Type.String({ maxLength: 253 }),
  port: Type.Integer({ minimum: 1, maximum: 65535 }),
  '*': Type.Optional(Type.String()),
});
const UidParams = Type.Object({ uid: Type.String({ pattern: '^[0-9a-f-]{36}$' }), port: Type.Integer({ minimum: 1, maximum: 65535 }), '*': Type.Optional(Type.String()) });

// Hop-by-hop headers, and Moat's own credentials (also as E2B's SDKs send them), which must never reach code in a sandbox.
const DROP = new Set(['authorization', 'x-api-key', 'x-access-token', 'e2b-traffic-access-token', 'connection', 'keep-alive', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

/**
 * Port exposure: HTTP and WebSocket to a port a process listens on inside a
 * sandbox, through the API server (authenticated like every call) and a
 * connection the sandbox's agent opens on its own loopback. There is no other
 * way in: the sandbox's network namespace accepts nothing from outside.
 */
export function portRoutes(app: FastifyInstance, ctx: ApiContext) {
  // Bodies are relayed as they come, never parsed.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  const byName = async (req: FastifyRequest) => {
    const { namespace, name, port } = req.params as { namespace: string; name: string; port: number };
    authorize(req.principal, namespace, 'write');
    const target = await ctx.backend.sandboxes.running(namespace, name);
    return { ...target, port, path: pathOf(req, `${SANDBOXES.replace(':namespace', namespace)}/${name}/ports/${port}`) };
  };
  const byUid = async (req: FastifyRequest) => {
    const { uid, port } = req.params as { uid: string; port: number };
    const found = await ctx.store.getSandboxByUid(uid);
    if (!found) throw new MoatError(404, 'NotFound', `no sandbox with uid ${uid}`);
    const { namespace, name } = found.sandbox.metadata;
    authorize(req.principal, namespace, 'write');
    const target = await ctx.backend.sandboxes.running(namespace, name);
    return { ...target, port, path: pathOf(req, `${PORTS_BY_UID}/${uid}/${port}`) };
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

interface Target {
  sandbox: Sandbox;
  agent: SandboxAgent;
  port: number;
  path: string;
}

/** The path (and query) after the route's prefix: what the sandbox's server sees. */
function pathOf(req: FastifyRequest, prefix: string): string {
  const rest = req.url.startsWith(prefix) ? req.url.slice(prefix.length) : '/';
  return rest.startsWith('/') ? rest : `/${rest}`;
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

async function dial(t: Target): Promise<Socket> {
  try {
    return await t.agent.dial(t.port, { timeoutMs: 10_000 }); // an open connection keeps the sandbox from idling
  } catch (err) {
    if (err instanceof AgentError && err.code === 'ECONNREFUSED') {
      throw new MoatError(502, 'BadGateway', `nothing listens on port ${t.port} in sandbox "${t.sandbox.metadata.name}"`);
    }
    throw new MoatError(502, 'BadGateway', `cannot reach port ${t.port} in sandbox "${t.sandbox.metadata.name}": ${(err as Error).message}`);
  }
}

function forwardHeaders(h: IncomingHttpHeaders, port: number): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = { host: `localhost:${port}` };
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !DROP.has(k) && !k.startsWith('sec-websocket')) out[k] = v;
  return out;
}

export async function relayHttp(req: FastifyRequest, reply: FastifyReply, t: Target): Promise<void> {
  const socket = await dial(t);
  reply.hijack();
  const res = reply.raw;
  const upstream = request({ createConnection: () => socket, method: req.method, path: t.path, headers: forwardHeaders(req.headers, t.port) });
  upstream.on('response', (r) => {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(r.headers)) if (v !== undefined && k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') headers[k] = v;
    res.writeHead(r.statusCode ?? 502, headers);
    r.pipe(res);
  });
  upstream.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`the sandbox's server on port ${t.port} failed: ${err.message}\n`);
    else res.destroy();
  });
  res.on('close', () => upstream.destroy());
  const body = req.body as NodeJS.ReadableStream | undefined;
  if (body && typeof body.pipe === 'function') body.pipe(upstream);
  else upstream.end();
}

async function relayWebSocket(client: WebSocket, req: FastifyRequest, t: Target): Promise<void> {
  const socket = await dial(t);
  const protocols = req.headers['sec-websocket-protocol']?.split(',').map((p) => p.trim()).filter(Boolean);
  const upstream = new WebSocket(`ws://localhost:${t.port}${t.path}`, protocols, { createConnection: () => socket, headers: forwardHeaders(req.headers, t.port) as Record<string, string> });
  upstream.on('open', () => {
    client.resume();
    client.on('message', (data, binary) => upstream.send(data, { binary }));
    upstream.on('message', (data, binary) => client.send(data, { binary }));
  });
  const closeCode = (code: number) => (code >= 1000 && code < 5000 && code !== 1005 && code !== 1006 ? code : 1000);
  upstream.on('close', (code, reason) => client.close(closeCode(code), reason));
  client.on('close', (code, reason) => (upstream.readyState === WebSocket.OPEN ? upstream.close(closeCode(code), reason) : upstream.terminate()));
  upstream.on('error', (err) => client.close(1011, `sandbox port ${t.port}: ${err.message}`.slice(0, 120)));
  client.on('error', () => upstream.terminate());
}
