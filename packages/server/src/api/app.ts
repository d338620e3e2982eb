import type { IncomingHttpHeaders } from 'node:http';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import cookie from '@fastify/cookie';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { Logger } from 'pino';
import { auditRequests } from '../audit/requests.js';
import { authenticate, presentedKey, type Principal } from '../auth/keys.js';
import type { ApiContext } from './context.js';
import { errorHandler } from './errors.js';
import { auditRoutes } from './routes/audit.js';
import { execRoutes } from './routes/exec.js';
import { fileRoutes } from './routes/files.js';
import { gatewayRoutes } from './routes/gateway.js';
import { identityRoutes } from './routes/identity.js';
import { imageRoutes } from './routes/images.js';
import { infoRoutes } from './routes/info.js';
import { objectRoutes } from './routes/objects.js';
import { portalRoutes } from './routes/portal.js';
import { portRoutes, rewritePortHost } from './routes/ports.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { secretRoutes } from './routes/secrets.js';
import { requireCapability } from '../backends/types.js';
import { backupRoutes } from './routes/backups.js';
import { volumeRoutes } from './routes/volumes.js';
import { PortalSessions, sessionRoutes } from './routes/session.js';
import { SandboxClaimSchema, SandboxTemplateSchema, SandboxWarmPoolSchema } from '@moat/core';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal;
  }
}

const PUBLIC = new Set(['/healthz', '/openapi.json']);
const REPLICA_HEADER = 'x-moat-replica';

/**
 * Another API served beside Moat's own (the E2B layer): its URL rewrite, tried first, and its routes, which
 * may use everything in the context. Passed in, so api/ never imports what builds on it.
 */
export interface ApiExtension {
  rewriteUrl?(req: { url?: string; headers: IncomingHttpHeaders }): string | undefined;
  routes(app: FastifyInstance, ctx: ApiContext): Promise<void>;
}

export async function buildApp(ctx: ApiContext, logger: Logger, extensions: ApiExtension[] = []): Promise<FastifyInstance> {
  const rewritePort = rewritePortHost(ctx.portDomain);
  const app = Fastify({
    loggerInstance: logger,
    bodyLimit: 1024 * 1024,
    // Unknown fields are an error, never silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    logController: new LogController({ disableRequestLogging: true }), // we log one line per request ourselves
    rewriteUrl: (req) => extensions.reduce<string | undefined>((url, e) => url ?? e.rewriteUrl?.(req), undefined) ?? rewritePort(req),
  }) as unknown as FastifyInstance; // pino's Logger type is narrower than Fastify's base logger
  app.setErrorHandler(errorHandler);
  // Kubernetes clients may send `content-type: application/json` with an empty body on DELETE: that is no body.
  const json = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (req.method === 'DELETE' && body === '') return done(null, undefined);
    json(req, body as string, done);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({
      kind: 'Status',
      apiVersion: 'v1',
      status: 'Failure',
      code: 404,
      reason: 'NotFound',
      message: `no route ${req.method} ${req.url.split('?')[0]}; see /openapi.json`,
    });
  });

  await app.register(swagger, {
    openapi: {
      info: { title: 'Moat API', version: ctx.version, description: 'Sandboxes for AI agents. Errors are Kubernetes Status objects.' },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer' } } },
      security: [{ apiKey: [] }],
    },
  });
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });

  await app.register(cookie);
  const sessions = new PortalSessions(ctx); // the web portal's cookie sessions, checked like keys (routes/session.ts)
  app.decorateRequest('principal', null as unknown as Principal);
  // First, so that refusals and errors name the replica too.
  app.addHook('onRequest', async (_req, reply) => void reply.header(REPLICA_HEADER, ctx.replica));
  app.addHook('onRequest', async (req) => {
    if (PUBLIC.has(req.url.split('?')[0]!) || req.routeOptions.config.ownAuth) return;
    const key = presentedKey(req.headers.authorization, req.headers['x-api-key'] as string | undefined);
    req.principal = (await sessions.authenticate(req, key !== undefined)) ?? (await authenticate(ctx.store, ctx.identity, key));
  });
  auditRequests(app, ctx.audit);
  app.addHook('onResponse', async (req, reply) => {
    req.log.info(
      { method: req.method, url: req.url.split('?')[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10, key: req.principal?.keyId },
      'request',
    );
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok', version: ctx.version }));
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  sandboxRoutes(app, ctx);
  objectRoutes(app, ctx.identity, ctx.backend.templates, {
    plural: 'sandboxtemplates',
    kind: 'SandboxTemplate',
    body: SandboxTemplateSchema,
    tag: 'templates',
  });
  objectRoutes(app, ctx.identity, ctx.backend.claims, { plural: 'sandboxclaims', kind: 'SandboxClaim', body: SandboxClaimSchema, tag: 'claims' });
  objectRoutes(app, ctx.identity, ctx.backend.pools, { plural: 'sandboxwarmpools', kind: 'SandboxWarmPool', body: SandboxWarmPoolSchema, tag: 'warm pools' });
  execRoutes(app, ctx);
  await app.register(async (scope) => imageRoutes(scope, ctx));
  infoRoutes(app, ctx);
  identityRoutes(app, ctx);
  auditRoutes(app, ctx);
  secretRoutes(app, ctx);
  await app.register(async (scope) => {
    // Named volumes are directories on this host (and backups are of them); on a cluster a sandbox's volume is its PVC.
    scope.addHook('onRequest', async () => requireCapability(ctx.backend, 'volumes', 'keep named volumes and their backups'));
    volumeRoutes(scope, ctx);
    backupRoutes(scope, ctx);
  });
  gatewayRoutes(app, ctx);
  sessionRoutes(app, ctx, sessions);
  await portalRoutes(app, ctx);
  await app.register(async (scope) => fileRoutes(scope, ctx));
  await app.register(async (scope) => portRoutes(scope, ctx));
  for (const e of extensions) await e.routes(app, ctx);
  return app;
}
