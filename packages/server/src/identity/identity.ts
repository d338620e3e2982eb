import { MoatError, alreadyExists, assertName, conflict, invalid, isDns1123Label, notFound } from '@moat/core';
import { isUniqueViolation } from '../store/errors.js';
import type { AgentTable, UserTable } from '../store/schema.js';
import type { Store } from '../store/store.js';
import type { Quota } from './types.js';

export const ROLES = ['admin', 'member', 'viewer'] as const;
export type Role = (typeof ROLES)[number];

export interface User {
  name: string;
  role: Role;
  quota: Quota;
  createdAt: string;
}

export interface Agent {
  user: string;
  name: string;
  /** Where this (user, agent) pair's sandboxes, templates, claims, pools and secrets live. */
  namespace: string;
  quota: Quota;
  createdAt: string;
}

/** Every user has this agent from the start; its namespace is the user's name. */
export const DEFAULT_AGENT = 'default';
/** The user `moat up` makes on first start; its default agent owns namespace `default`. */
export const BOOTSTRAP_ADMIN = 'admin';

/** `alice` for alice's default agent, `alice-coder` for her agent `coder`. */
function namespaceFor(user: string, agent: string): string {
  if (user === BOOTSTRAP_ADMIN && agent === DEFAULT_AGENT) return 'default';
  const ns = agent === DEFAULT_AGENT ? user : `${user}-${agent}`;
  if (!isDns1123Label(ns)) throw invalid(`namespace "${ns}" of agent "${agent}" of user "${user}" would be longer than 63 characters: use shorter names`);
  return ns;
}

const toUser = (r: UserTable): User => ({ name: r.name, role: r.role as Role, quota: JSON.parse(r.quota) as Quota, createdAt: r.created_at });
const toAgent = (r: AgentTable): Agent => ({
  user: r.user,
  name: r.name,
  namespace: r.namespace,
  quota: JSON.parse(r.quota) as Quota,
  createdAt: r.created_at,
});
/** Users, their agents and the namespaces those own. Keys are in auth/keys.ts. */
export class Identity {
  constructor(private readonly store: Store) {}

  private get db() {
    return this.store.db;
  }

  async ensureBootstrapAdmin(): Promise<void> {
    if (await this.findUser(BOOTSTRAP_ADMIN)) return;
    await this.createUser(BOOTSTRAP_ADMIN, 'admin', {}).catch((err: unknown) => {
      // Another server on the same database made it first.
      if (!(err instanceof MoatError && err.reason === 'AlreadyExists')) throw err;
    });
  }

  async createUser(name: string, role: Role, quota: Quota): Promise<User> {
    assertName(name, 'user name');
    const now = new Date().toISOString();
    const namespace = namespaceFor(name, DEFAULT_AGENT);
    try {
      await this.db.transaction().execute(async (tx) => {
        await tx
          .insertInto('users')
          .values({ name, role, quota: JSON.stringify(quota), created_at: now })
          .execute();
        await tx.insertInto('agents').values({ user: name, name: DEFAULT_AGENT, namespace, quota: '{}', created_at: now }).execute();
      });
    } catch (err) {
      if (isUniqueViolation(err)) throw alreadyExists(`user "${name}" or namespace "${namespace}" already exists`, { kind: 'users', name });
      throw err;
    }
    return this.getUser(name);
  }

  async findUser(name: string): Promise<User | undefined> {
    const row = await this.db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    return row && toUser(row);
  }

  async getUser(name: string): Promise<User> {
    const u = await this.findUser(name);
    if (!u) throw notFound(`user "${name}" not found`, { kind: 'users', name });
    return u;
  }

  async listUsers(): Promise<User[]> {
    return (await this.db.selectFrom('users').selectAll().orderBy('name').execute()).map(toUser);
  }

  async updateUser(name: string, u: { role?: Role; quota?: Quota }): Promise<User> {
    await this.getUser(name);
    if (name === BOOTSTRAP_ADMIN && u.role && u.role !== 'admin') throw conflict(`user "${BOOTSTRAP_ADMIN}" stays an admin: it is the key \`moat up\` prints`);
    await this.db
      .updateTable('users')
      .set({ ...(u.role ? { role: u.role } : {}), ...(u.quota ? { quota: JSON.stringify(u.quota) } : {}) })
      .where('name', '=', name)
      .execute();
    return this.getUser(name);
  }

  /** Only a user who owns nothing any more can go; their keys go with them. */
  async deleteUser(name: string): Promise<void> {
    await this.getUser(name);
    if (name === BOOTSTRAP_ADMIN) throw conflict(`user "${BOOTSTRAP_ADMIN}" cannot be deleted: it is the key \`moat up\` prints`);
    for (const a of await this.listAgents(name)) await this.assertEmpty(a);
    await this.db.transaction().execute(async (tx) => {
      await tx.deleteFrom('api_keys').where('user', '=', name).execute();
      await tx.deleteFrom('agents').where('user', '=', name).execute();
      await tx.deleteFrom('users').where('name', '=', name).execute();
    });
  }

  async createAgent(user: string, name: string, quota: Quota): Promise<Agent> {
    await this.getUser(user);
    assertName(name, 'agent name');
    const namespace = namespaceFor(user, name);
    try {
      await this.db
        .insertInto('agents')
        .values({ user, name, namespace, quota: JSON.stringify(quota), created_at: new Date().toISOString() })
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw alreadyExists(`agent "${name}" of user "${user}" or namespace "${namespace}" already exists`, { kind: 'agents', name });
      throw err;
    }
    return this.getAgent(user, name);
  }

  async getAgent(user: string, name: string): Promise<Agent> {
    const row = await this.db.selectFrom('agents').selectAll().where('user', '=', user).where('name', '=', name).executeTakeFirst();
    if (!row) throw notFound(`agent "${name}" of user "${user}" not found`, { kind: 'agents', name });
    return toAgent(row);
  }

  async listAgents(user: string): Promise<Agent[]> {
    return (await this.db.selectFrom('agents').selectAll().where('user', '=', user).orderBy('name').execute()).map(toAgent);
  }

  async setAgentQuota(user: string, name: string, quota: Quota): Promise<Agent> {
    await this.getAgent(user, name);
    await this.db
      .updateTable('agents')
      .set({ quota: JSON.stringify(quota) })
      .where('user', '=', user)
      .where('name', '=', name)
      .execute();
    return this.getAgent(user, name);
  }

  async deleteAgent(user: string, name: string): Promise<void> {
    const agent = await this.getAgent(user, name);
    if (name === DEFAULT_AGENT) throw conflict(`the default agent of user "${user}" goes only with the user`);
    await this.assertEmpty(agent);
    await this.db.transaction().execute(async (tx) => {
      await tx.deleteFrom('api_keys').where('user', '=', user).where('agent', '=', name).execute();
      await tx.deleteFrom('agents').where('user', '=', user).where('name', '=', name).execute();
    });
  }

  /** The (user, agent) pair that owns a namespace. */
  async owner(namespace: string): Promise<{ user: string; agent: string } | undefined> {
    const row = await this.db.selectFrom('agents').select(['user', 'name']).where('namespace', '=', namespace).executeTakeFirst();
    return row && { user: row.user, agent: row.name };
  }

  private async assertEmpty(a: Agent): Promise<void> {
    const count = async (table: 'sandboxes' | 'objects') =>
      Number(
        (
          await this.db
            .selectFrom(table)
            .select((eb) => eb.fn.countAll().as('n'))
            .where('namespace', '=', a.namespace)
            .executeTakeFirstOrThrow()
        ).n,
      );
    const n = (await count('sandboxes')) + (await count('objects'));
    if (n > 0) throw conflict(`namespace "${a.namespace}" of agent "${a.name}" of user "${a.user}" still holds ${n} object(s): delete them first`);
  }
}
