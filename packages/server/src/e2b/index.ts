import type { FastifyInstance } from 'fastify';
import type { ApiContext } from '../api/context.js';
import { controlPlaneErrorHandler, controlPlaneRoutes } from './control-plane.js';
import { authenticateDataPlane, portRelayRoutes } from './data-plane.js';
import { envdErrorHandler, envdRoutes } from './envd.js';
import { DEFAULT_TEMPLATE_ALIASES, E2bSandboxes } from './sandboxes.js';
import { templateBuildRoutes } from './template-build.js';

export { rewriteE2bRequest } from './data-plane.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route authenticates its caller itself (E2B's data plane carries its key in its own headers). */
    ownAuth?: boolean;
  }
}

/** `MOAT_E2B_TEMPLATES=name=template,...`: E2B template names and the Moat templates they stand for. */
export function templateAliases(env = process.env.MOAT_E2B_TEMPLATES): Record<string, string> {
  const pairs = (env ?? '')
    .split(',')
    .filter(Boolean)
    .map((p) => p.split('=').map((s) => s.trim()));
  const bad = pairs.find((p) => p.length !== 2 || !p[0] || !p[1]);
  if (bad) throw new Error(`MOAT_E2B_TEMPLATES: expected name=template pairs separated by commas, got "${bad.join('=')}"`);
  return Object.fromEntries(pairs);
}

/**
 * E2B compatibility: the control plane the `e2b` SDKs call (`E2B_API_URL`),
 * and their sandbox traffic (`E2B_SANDBOX_URL`): envd, served here, and other
 * ports (the code interpreter's 49999), relayed into the sandbox. See docs/e2b.md.
 */
export async function e2bRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const e2b = new E2bSandboxes(
    ctx.backend.claims,
    ctx.backend.sandboxes,
    { ...DEFAULT_TEMPLATE_ALIASES, ...ctx.e2bTemplates },
    app.log,
    () => ctx.backend.leads(),
    ctx.backend.capabilities.pause,
  );
  await e2b.start();
  app.addHook('onClose', async () => e2b.stop());

  await app.register(async (scope) => {
    scope.setErrorHandler(controlPlaneErrorHandler);
    controlPlaneRoutes(scope, e2b);
  });
  await app.register(async (scope) => templateBuildRoutes(scope, ctx, e2b));
  const dataPlane = (register: (scope: FastifyInstance) => void) =>
    app.register(async (scope) => {
      scope.addHook('onRoute', (route) => void (route.config = { ...route.config, ownAuth: true }));
      authenticateDataPlane(scope, ctx);
      scope.setErrorHandler(envdErrorHandler);
      register(scope);
    });
  await dataPlane((scope) => envdRoutes(scope, ctx, e2b));
  await dataPlane((scope) => portRelayRoutes(scope, e2b));
}
