import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION } from '@moat/core';
import type { FastifyInstance } from 'fastify';
import { createApiKey, listApiKeys, revokeApiKey } from '../../auth/keys.js';
import { DEFAULT_AGENT, ROLES } from '../../identity/identity.js';
import { checkQuota } from '../../identity/quotas.js';
import { QuotaSchema } from '../../identity/types.js';
import { authorizeUser, requireAdmin } from '../../auth/authorize.js';
import type { ApiContext } from '../context.js';

const IDENTITY = `/apis/${MOAT_API_VERSION}`;
const USERS = `${IDENTITY}/users`;

const Name = Type.String({ minLength: 1, maxLength: 63 });
const Role = Type.Union(ROLES.map((r) => Type.Literal(r)));
const UserParams = Type.Object({ user: Name }, { additionalProperties: false });
const AgentParams = Type.Object({ user: Name, agent: Name }, { additionalProperties: false });
const KeyParams = Type.Object({ user: Name, id: Type.String({ pattern: '^[0-9a-f]{12}$' }) }, { additionalProperties: false });

const CreateUser = Type.Object({ name: Name, role: Role, quota: Type.Optional(QuotaSchema) }, { additionalProperties: false });
const UpdateUser = Type.Object({ role: Type.Optional(Role), quota: Type.Optional(QuotaSchema) }, { additionalProperties: false });
const CreateAgent = Type.Object({ name: Name, quota: Type.Optional(QuotaSchema) }, { additionalProperties: false });
const UpdateAgent = Type.Object({ quota: QuotaSchema }, { additionalProperties: false });
const CreateKey = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 128 }),
    agent: Type.Optional(Name),
    expiresAt: Type.Optional(Type.String({ format: 'date-time', description: 'the key stops working after this; default never' })),
  },
  { additionalProperties: false },
);

const list = (kind: string, items: unknown[]) => ({ apiVersion: MOAT_API_VERSION, kind: `${kind}List`, items });

/** Users (admins only), their agents and their API keys; `whoami` for any key. */
export function identityRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { identity, store } = ctx;
  const tags = ['identity'];

  app.get(`${IDENTITY}/whoami`, { schema: { tags, summary: 'The user, role, agent and namespaces of the calling key' } }, async (req) => {
    const p = req.principal;
    // Where this key works by default: its agent's namespace, or its user's default agent's.
    const namespace = [...p.namespaces].find(([, agent]) => agent === (p.agent ?? DEFAULT_AGENT))?.[0];
    return { user: p.user, role: p.role, ...(p.agent ? { agent: p.agent } : {}), keyId: p.keyId, namespace, namespaces: [...p.namespaces.keys()] };
  });

  app.get(USERS, { schema: { tags, summary: 'List users (admin)' } }, async (req) => {
    requireAdmin(req.principal, 'list users');
    return list('User', await identity.listUsers());
  });

  app.post(
    USERS,
    { schema: { tags, summary: "Create a user (admin); the answer holds the user's first API key, shown only once", body: CreateUser } },
    async (req, reply) => {
      requireAdmin(req.principal, 'create users');
      const body = req.body as Static<typeof CreateUser>;
      const user = await identity.createUser(body.name, body.role, checkQuota(body.quota ?? {}));
      const key = await createApiKey(store, { name: 'first key', user: user.name });
      return reply.status(201).send({ ...user, key });
    },
  );

  app.get(`${USERS}/:user`, { schema: { tags, summary: 'Get a user', params: UserParams } }, async (req) => {
    const { user } = req.params as Static<typeof UserParams>;
    authorizeUser(req.principal, user, 'read');
    return identity.getUser(user);
  });

  app.patch(`${USERS}/:user`, { schema: { tags, summary: "Change a user's role or quota (admin)", params: UserParams, body: UpdateUser } }, async (req) => {
    const { user } = req.params as Static<typeof UserParams>;
    authorizeUser(req.principal, user, 'read');
    requireAdmin(req.principal, 'change roles and quotas');
    const body = req.body as Static<typeof UpdateUser>;
    return identity.updateUser(user, { ...(body.role ? { role: body.role } : {}), ...(body.quota ? { quota: checkQuota(body.quota) } : {}) });
  });

  app.delete(
    `${USERS}/:user`,
    { schema: { tags, summary: 'Delete a user who owns nothing any more, with their keys (admin)', params: UserParams } },
    async (req, reply) => {
      const { user } = req.params as Static<typeof UserParams>;
      authorizeUser(req.principal, user, 'read');
      requireAdmin(req.principal, 'delete users');
      await identity.deleteUser(user);
      return reply.status(204).send();
    },
  );

  app.get(`${USERS}/:user/agents`, { schema: { tags, summary: "List a user's agents", params: UserParams } }, async (req) => {
    const { user } = req.params as Static<typeof UserParams>;
    authorizeUser(req.principal, user, 'read');
    await identity.getUser(user);
    return list('Agent', await identity.listAgents(user));
  });

  app.post(
    `${USERS}/:user/agents`,
    { schema: { tags, summary: 'Create an agent and its namespace', params: UserParams, body: CreateAgent } },
    async (req, reply) => {
      const { user } = req.params as Static<typeof UserParams>;
      authorizeUser(req.principal, user, 'write');
      const body = req.body as Static<typeof CreateAgent>;
      if (body.quota) requireAdmin(req.principal, 'set quotas');
      return reply.status(201).send(await identity.createAgent(user, body.name, checkQuota(body.quota ?? {})));
    },
  );

  app.get(`${USERS}/:user/agents/:agent`, { schema: { tags, summary: 'Get an agent', params: AgentParams } }, async (req) => {
    const { user, agent } = req.params as Static<typeof AgentParams>;
    authorizeUser(req.principal, user, 'read');
    return identity.getAgent(user, agent);
  });

  app.patch(
    `${USERS}/:user/agents/:agent`,
    { schema: { tags, summary: "Set an agent's quota (admin)", params: AgentParams, body: UpdateAgent } },
    async (req) => {
      const { user, agent } = req.params as Static<typeof AgentParams>;
      authorizeUser(req.principal, user, 'read');
      requireAdmin(req.principal, 'set quotas');
      return identity.setAgentQuota(user, agent, checkQuota((req.body as Static<typeof UpdateAgent>).quota));
    },
  );

  app.delete(
    `${USERS}/:user/agents/:agent`,
    { schema: { tags, summary: 'Delete an agent whose namespace is empty, with its keys', params: AgentParams } },
    async (req, reply) => {
      const { user, agent } = req.params as Static<typeof AgentParams>;
      authorizeUser(req.principal, user, 'write');
      await identity.deleteAgent(user, agent);
      return reply.status(204).send();
    },
  );

  app.get(`${USERS}/:user/keys`, { schema: { tags, summary: "List a user's API keys (never the keys themselves)", params: UserParams } }, async (req) => {
    const { user } = req.params as Static<typeof UserParams>;
    authorizeUser(req.principal, user, 'read');
    await identity.getUser(user);
    return list('ApiKey', await listApiKeys(store, user));
  });

  app.post(
    `${USERS}/:user/keys`,
    {
      schema: {
        tags,
        summary: 'Create an API key for the user or one of its agents; the key is shown only in this answer',
        params: UserParams,
        body: CreateKey,
      },
    },
    async (req, reply) => {
      const { user } = req.params as Static<typeof UserParams>;
      authorizeUser(req.principal, user, 'write');
      const body = req.body as Static<typeof CreateKey>;
      await identity.getUser(user);
      if (body.agent) await identity.getAgent(user, body.agent);
      return reply.status(201).send(await createApiKey(store, { name: body.name, user, agent: body.agent, expiresAt: body.expiresAt }));
    },
  );

  app.delete(`${USERS}/:user/keys/:id`, { schema: { tags, summary: 'Revoke an API key', params: KeyParams } }, async (req) => {
    const { user, id } = req.params as Static<typeof KeyParams>;
    authorizeUser(req.principal, user, 'write');
    return revokeApiKey(store, user, id);
  });
}
