/**
 * HTTP and WebSocket to a port a process listens on inside a sandbox, over a
 * connection the sandbox's agent opens on its own loopback: the one way in,
 * used by Moat's port routes and by E2B's. The sandbox's network namespace
 * accepts nothing from outside.
 */
import { request, type IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { MoatError, type Sandbox } from '@moat/core';
import { AgentError, type SandboxAgent } from '@moat/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import WebSocket from 'ws';

/** Where a relayed request goes: `path` (with the query) is what the sandbox's server sees. */
export interface RelayTarget {
  sandbox: Sandbox;
  agent: SandboxAgent;
  port: number;
  path: string;
}

// Hop-by-hop headers, and Moat's own credentials (also as E2B's SDKs send them), which must never reach code in a sandbox.
const DROP = new Set([
  'authorization',
  'x-api-key',
  'x-access-token',
  'e2b-traffic-access-token',
  'connection',
  'keep-alive',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

/** Bodies are relayed as they come, never parsed. */
export function relayBodies(scope: FastifyInstance): void {
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
}

/** The path (and query) after the route's prefix: what the sandbox's server sees. */
export function pathAfter(req: FastifyRequest, prefix: string): string {
  const rest = req.url.startsWith(prefix) ? req.url.slice(prefix.length) : '/';
  return rest.startsWith('/') ? rest : `/${rest}`;
}

async function dial(t: RelayTarget): Promise<Duplex> {
  try {
    return await t.agent.dial(t.port, { timeoutMs: 10_000 }); // an open connection keeps the sandbox from idling (the backend's agent counts it)
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

export async function relayHttp(req: FastifyRequest, reply: FastifyReply, t: RelayTarget): Promise<void> {
  const socket = await dial(t);
  reply.hijack();
  const res = reply.raw;
  const upstream = request({ createConnection: () => socket, method: req.method, path: t.path, headers: forwardHeaders(req.headers, t.port) });
  upstream.on('response', (r) => {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(r.headers))
      if (v !== undefined && k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') headers[k] = v;
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

export async function relayWebSocket(client: WebSocket, req: FastifyRequest, t: RelayTarget): Promise<void> {
  const socket = await dial(t);
  const protocols = req.headers['sec-websocket-protocol']
    ?.split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  const upstream = new WebSocket(`ws://localhost:${t.port}${t.path}`, protocols, {
    createConnection: () => socket,
    headers: forwardHeaders(req.headers, t.port) as Record<string, string>,
  });
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
