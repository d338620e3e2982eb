import type { IncomingHttpHeaders } from 'node:http';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { authenticate, presentedKey } from '../auth/keys.js';
import type { ApiContext } from '../api/context.js';
import { pathAfter, relayBodies, relayHttp } from '../relay.js';
import { E2B_ID_PATTERN, type E2bSandboxes } from './sandboxes.js';

/** envd's port: served by Moat itself. Every other port is relayed into the sandbox (49999: the code interpreter). */
const ENVD_PORT = 49983;
export const ENVD_PREFIX = '/e2b/envd/:sandboxId';
const PORTS_PREFIX = '/e2b/ports/:sandboxId/:port';

const one = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

/**
 * E2B's SDKs send all sandbox traffic to one URL (`E2B_SANDBOX_URL`) and name
 * the sandbox and port in headers. Such a request is routed as if to
 * `/e2b/envd/<id>/<path>` or `/e2b/ports/<id>/<port>/<path>`; undefined
 * leaves any other request alone.
 */
export function rewriteE2bRequest(req: { url?: string; headers: IncomingHttpHeaders }): string | undefined {
  const id = one(req.headers['e2b-sandbox-id']);
  if (id === undefined) return undefined;
  const port = one(req.headers['e2b-sandbox-port']) ?? String(ENVD_PORT);
  const url = req.url?.startsWith('/') ? req.url : `/${req.url ?? ''}`;
  const sid = encodeURIComponent(id);
  return port === String(ENVD_PORT) ? `/e2b/envd/${sid}${url}` : `/e2b/ports/${sid}/${encodeURIComponent(port)}${url}`;
}

/**
 * The SDKs send no API key to a sandbox, only the token the create (or
 * connect) call returned, which is the caller's own Moat key: as
 * `X-Access-Token` (envd, /execute) or `E2B-Traffic-Access-Token` (the code
 * interpreter's other calls). A plain Moat key works too, for curl.
 */
export function authenticateDataPlane(scope: FastifyInstance, ctx: ApiContext) {
  scope.addHook('onRequest', async (req) => {
    const h = req.headers;
    const key = one(h['x-access-token']) ?? one(h['e2b-traffic-access-token']) ?? presentedKey(h.authorization, one(h['x-api-key']));
    req.principal = await authenticate(ctx.store, ctx.identity, key);
  });
}

export const SandboxIdParams = Type.Object({ sandboxId: Type.String({ pattern: E2B_ID_PATTERN }), '*': Type.Optional(Type.String()) });

/** Any other port, as Moat's port exposure does (the agent dials the sandbox's own loopback). */
export function portRelayRoutes(scope: FastifyInstance, e2b: E2bSandboxes) {
  relayBodies(scope);
  const params = Type.Object({
    sandboxId: SandboxIdParams.properties.sandboxId,
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    '*': Type.Optional(Type.String()),
  });
  const handler = async (req: FastifyRequest, reply: Parameters<typeof relayHttp>[1]) => {
    const { sandboxId, port } = req.params as { sandboxId: string; port: number };
    const { sandbox, agent } = await e2b.running(req.principal, sandboxId);
    return relayHttp(req, reply, { sandbox, agent, port, path: pathAfter(req, `/e2b/ports/${sandboxId}/${port}`) });
  };
  for (const url of [PORTS_PREFIX, `${PORTS_PREFIX}/*`]) {
    scope.route({ method: ['GET', 'HEAD', 'DELETE', 'PATCH', 'POST', 'PUT', 'OPTIONS'], url, schema: { hide: true, params }, handler });
  }
}
