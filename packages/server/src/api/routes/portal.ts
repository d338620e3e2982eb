import { existsSync } from 'node:fs';
import { readFile, statfs } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import fastifyStatic from '@fastify/static';
import { LABELS, MOAT_API_VERSION, RUNTIME_CLASSES } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../context.js';
import { authorize, requireAdmin } from '../../auth/authorize.js';

const PORTAL_API = `/apis/${MOAT_API_VERSION}/portal`;

/**
 * Where the built portal is: $MOAT_PORTAL_DIR, else the `dist` folder of the
 * @moat/portal package (`npm run build` makes it).
 */
export function portalDir(env = process.env.MOAT_PORTAL_DIR): string | undefined {
  if (env) return env;
  try {
    return join(dirname(createRequire(import.meta.url).resolve('@moat/portal/package.json')), 'dist');
  } catch {
    return undefined;
  }
}

const NOT_BUILT = `<!doctype html><html lang="en"><meta charset="utf-8"><title>Moat</title>
<body style="font-family:system-ui;margin:3rem"><h1>Moat</h1><p>The web portal is not built on this server.
Run <code>npm run build</code> in the Moat checkout (or set MOAT_PORTAL_DIR) and restart the server.
The API is at <a href="/openapi.json">/openapi.json</a>.</p></body></html>`;

/**
 * The web portal: its page at `/` and its hashed assets under `/assets/`
 * (public: the page holds no data; everything it shows comes from the API
 * with the session's credentials). The portal routes with the URL's hash, so
 * no path of the API, the E2B routes or sandbox ports is shadowed.
 * Also the two summaries the portal polls: usage of every visible sandbox,
 * and the host's capacity (admins).
 */
export async function portalRoutes(app: FastifyInstance, ctx: ApiContext, dir = portalDir()): Promise<void> {
  const index = dir && existsSync(join(dir, 'index.html')) ? join(dir, 'index.html') : undefined;

  await app.register(async (scope) => {
    scope.addHook('onRoute', (route) => {
      route.config = { ...(route.config as object), ownAuth: true };
      route.schema = { ...route.schema, hide: true };
    });
    const page = async (_req: unknown, reply: import('fastify').FastifyReply) => {
      const csp =
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
      void reply
        .header('cache-control', 'no-cache')
        .header('x-frame-options', 'DENY')
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'same-origin');
      if (!index) return reply.status(503).type('text/html; charset=utf-8').send(NOT_BUILT);
      return reply
        .header('content-security-policy', csp)
        .type('text/html; charset=utf-8')
        .send(await readFile(index));
    };
    scope.get('/', page);
    scope.get('/index.html', page);
    if (index && existsSync(join(dir!, 'assets'))) {
      await scope.register(fastifyStatic, {
        root: join(dir!, 'assets'),
        prefix: '/assets/',
        preCompressed: true, // the build writes .br and .gz beside each asset
        index: false,
        // Asset names carry a content hash: cache them for good.
        maxAge: '365d',
        immutable: true,
        setHeaders: (res) => res.setHeader('x-content-type-options', 'nosniff'),
      });
    }
  });

  app.get(
    `${PORTAL_API}/usage`,
    { schema: { tags: ['portal'], summary: "Resource usage of every running sandbox the caller may see, with each one's owner" } },
    async (req) => {
      const all = (await ctx.backend.sandboxes.list()).filter((s) => authorize(req.principal, s.metadata.namespace, 'read', false));
      const owners = new Map<string, { user: string; agent: string } | undefined>();
      for (const ns of new Set(all.map((s) => s.metadata.namespace))) owners.set(ns, await ctx.identity.owner(ns));
      const items = await Promise.all(
        all.map(async (s) => {
          const usage = s.status.phase === 'Running' ? await ctx.backend.sandboxes.usage(s) : undefined;
          return {
            namespace: s.metadata.namespace,
            name: s.metadata.name,
            owner: owners.get(s.metadata.namespace),
            template: s.metadata.labels?.[LABELS.template],
            ...(usage ? { usage } : {}),
          };
        }),
      );
      return { time: new Date().toISOString(), items };
    },
  );

  app.get(
    `${PORTAL_API}/capacity`,
    { schema: { tags: ['portal'], summary: "The host's CPU, memory and disk, and sandboxes per runtime (admin)" } },
    async (req) => {
      requireAdmin(req.principal, 'see host capacity');
      const fs = await statfs(ctx.images.content.dir).catch(() => undefined);
      const sandboxes = await ctx.backend.sandboxes.list();
      const perRuntime = Object.fromEntries(
        RUNTIME_CLASSES.map((r) => [r, { available: ctx.backend.runtimes[r]?.available ?? false, total: 0, byPhase: {} as Record<string, number> }]),
      );
      for (const s of sandboxes) {
        const r = (s.status.runtimeClassName ?? s.spec.podTemplate.spec.runtimeClassName ?? 'runc') as string;
        const row = (perRuntime[r] ??= { available: false, total: 0, byPhase: {} });
        row.total++;
        row.byPhase[s.status.phase] = (row.byPhase[s.status.phase] ?? 0) + 1;
      }
      return {
        cpu: { cores: cpus().length, load: loadavg() },
        memory: { totalBytes: totalmem(), freeBytes: freemem() },
        ...(fs ? { disk: { totalBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize } } : {}),
        sandboxes: { total: sandboxes.length, perRuntime },
      };
    },
  );
}
