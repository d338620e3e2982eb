import { Type, type Static } from '@sinclair/typebox';
import { MoatError } from '@moat/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { presentedKey } from '../auth/keys.js';
import { E2B_ID_PATTERN, isPaused, resources, type E2bSandbox, type E2bSandboxes } from './sandboxes.js';

/**
 * The envd version Moat's envd speaks, as the SDK reads it to pick features:
 * ≥ 0.5.7 has raw uploads and CloseStdin; file metadata (0.6.2) and watch
 * entries (0.6.3) are not served, so the SDK refuses those calls itself.
 */
const ENVD_VERSION = '0.5.7';
/** At most a day: a sandbox that should live longer can call setTimeout again. */
const MAX_TIMEOUT_SECONDS = 86_400;

const StringMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 8192 }));
const Timeout = Type.Integer({ minimum: 1, maximum: MAX_TIMEOUT_SECONDS });
const NewSandbox = Type.Object(
  {
    templateID: Type.String({ minLength: 1, maxLength: 253 }),
    timeout: Type.Optional(Timeout),
    metadata: Type.Optional(StringMap),
    envVars: Type.Optional(StringMap),
    // Sent by the SDKs by default; Moat's egress comes from the template's egressPolicy, and the data plane always needs the token.
    secure: Type.Optional(Type.Boolean()),
    allow_internet_access: Type.Optional(Type.Boolean()),
    autoPause: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
const IdParams = Type.Object({ sandboxID: Type.String({ pattern: E2B_ID_PATTERN }) });
const ConnectBody = Type.Object({ timeout: Type.Optional(Timeout) }, { additionalProperties: false });
const PauseBody = Type.Object({ memory: Type.Optional(Type.Boolean()) }, { additionalProperties: false });
const TimeoutBody = Type.Object({ timeout: Timeout }, { additionalProperties: false });
const ListQuery = Type.Object(
  {
    metadata: Type.Optional(Type.String({ maxLength: 8192 })),
    state: Type.Optional(Type.String({ maxLength: 64 })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    nextToken: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$' })),
  },
  { additionalProperties: false },
);

/** `running` or `paused`, E2B's two states (a starting sandbox counts as running). */
const stateOf = (s: E2bSandbox) => (isPaused(s) ? 'paused' : 'running');

function listed(s: E2bSandbox) {
  return {
    sandboxID: s.id,
    templateID: s.claim.metadata.annotations?.['e2b.dev/template'] ?? s.claim.spec.sandboxTemplateRef?.name,
    clientID: 'moat',
    startedAt: s.sandbox!.metadata.creationTimestamp,
    endAt: new Date(s.endAt).toISOString(),
    state: stateOf(s),
    envdVersion: ENVD_VERSION,
    metadata: s.metadata,
    ...resources(s.sandbox!),
  };
}

/** What create and connect answer. The envd token is the caller's own key: the data plane authenticates with it. */
function created(s: E2bSandbox, key: string | undefined) {
  return { ...listed(s), ...(key ? { envdAccessToken: key, trafficAccessToken: key } : {}), domain: null };
}

const keyOf = (req: FastifyRequest) => presentedKey(req.headers.authorization, req.headers['x-api-key'] as string | undefined);

/** E2B's control plane (`E2B_API_URL`): the calls the SDKs make, on Moat's sandboxes and claims. */
export function controlPlaneRoutes(scope: FastifyInstance, e2b: E2bSandboxes) {
  const schema = (summary: string, extra: Record<string, unknown> = {}) => ({ tags: ['e2b'], summary, ...extra });

  const create = async (req: FastifyRequest, reply: FastifyReply) => {
    const body = req.body as Static<typeof NewSandbox>;
    const s = await e2b.create(req.principal, body);
    return reply.status(201).send(created(s, keyOf(req)));
  };
  scope.post('/sandboxes', { schema: schema('E2B: create a sandbox from a template (SDK ≤ 2.45)', { body: NewSandbox }) }, create);
  scope.post('/v2/sandboxes', { schema: schema('E2B: create a sandbox from a template', { body: NewSandbox }) }, create);

  // Connect to a sandbox, resuming a paused one (201; 200 when it was running). A running one's timeout only ever extends.
  const connect = async (req: FastifyRequest, reply: FastifyReply) => {
    const { sandboxID } = req.params as { sandboxID: string };
    const s = await e2b.find(req.principal, sandboxID, 'write');
    if (!s.sandbox) throw new MoatError(404, 'NotFound', `sandbox "${sandboxID}" is gone`);
    const timeout = (req.body as Static<typeof ConnectBody> | undefined)?.timeout ?? 300;
    const resumed = await e2b.resume(s);
    if (resumed || Date.now() + timeout * 1000 > s.endAt) await e2b.setTimeout(s, timeout);
    return reply.status(resumed ? 201 : 200).send(created(s, keyOf(req)));
  };
  scope.post(
    '/sandboxes/:sandboxID/connect',
    { schema: schema('E2B: connect to a sandbox (SDK ≤ 2.45)', { params: IdParams, body: Type.Optional(ConnectBody) }) },
    connect,
  );
  scope.post(
    '/v2/sandboxes/:sandboxID/connect',
    { schema: schema('E2B: connect to (or resume) a sandbox', { params: IdParams, body: Type.Optional(ConnectBody) }) },
    connect,
  );

  scope.get('/sandboxes/:sandboxID', { schema: schema('E2B: sandbox info', { params: IdParams }) }, async (req) => {
    const s = await e2b.find(req.principal, (req.params as { sandboxID: string }).sandboxID);
    if (!s.sandbox) throw new MoatError(404, 'NotFound', `sandbox "${s.id}" is gone`);
    return { ...listed(s), domain: null };
  });

  scope.delete('/sandboxes/:sandboxID', { schema: schema('E2B: kill a sandbox', { params: IdParams }) }, async (req, reply) => {
    const s = await e2b.find(req.principal, (req.params as { sandboxID: string }).sandboxID, 'write');
    await e2b.kill(s.namespace, s.id);
    return reply.status(204).send();
  });

  scope.post(
    '/sandboxes/:sandboxID/timeout',
    { schema: schema('E2B: set the time left, from now', { params: IdParams, body: TimeoutBody }) },
    async (req, reply) => {
      const s = await e2b.find(req.principal, (req.params as { sandboxID: string }).sandboxID, 'write');
      await e2b.setTimeout(s, (req.body as Static<typeof TimeoutBody>).timeout);
      return reply.status(204).send();
    },
  );

  // Memory always stays (the processes are frozen, not checkpointed), so `memory` changes nothing.
  scope.post(
    '/sandboxes/:sandboxID/pause',
    { schema: schema('E2B: pause a sandbox (409 when it already is)', { params: IdParams, body: Type.Optional(PauseBody) }) },
    async (req, reply) => {
      const s = await e2b.find(req.principal, (req.params as { sandboxID: string }).sandboxID, 'write');
      if (!(await e2b.pause(s))) throw new MoatError(409, 'Conflict', `sandbox "${s.id}" is already paused`);
      return reply.status(204).send();
    },
  );

  const list = async (req: FastifyRequest, reply: FastifyReply) => {
    const q = req.query as Static<typeof ListQuery>;
    const wanted = new URLSearchParams(q.metadata ?? '');
    const states = q.state?.split(',').filter(Boolean);
    const all = (await e2b.list(req.principal)).filter(
      (s) => [...wanted].every(([k, v]) => s.metadata[k] === v) && (!states?.length || states.includes(stateOf(s))),
    );
    const from = Number(q.nextToken ?? 0);
    const page = q.limit ? all.slice(from, from + q.limit) : all.slice(from);
    if (q.limit && from + q.limit < all.length) void reply.header('x-next-token', String(from + q.limit));
    return page.map(listed);
  };
  scope.get('/sandboxes', { schema: schema('E2B: list running sandboxes (SDK ≤ 2.45)', { querystring: ListQuery }) }, list);
  scope.get('/v2/sandboxes', { schema: schema('E2B: list sandboxes', { querystring: ListQuery }) }, list);
}

/** E2B's error body: `{code, message}` with the HTTP status. */
export function controlPlaneErrorHandler(err: Error, req: FastifyRequest, reply: FastifyReply) {
  const fe = err as { validation?: unknown; statusCode?: number };
  const code = err instanceof MoatError ? err.code : fe.validation ? 400 : (fe.statusCode ?? 500);
  if (code >= 500 && code !== 501) req.log.error({ err }, 'e2b request failed');
  const message = code >= 500 && !(err instanceof MoatError) ? `internal error (request ${req.id}): see the server log` : err.message;
  return reply.status(code).type('application/json').send({ code, message });
}
