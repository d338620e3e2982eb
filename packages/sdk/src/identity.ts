import type { HttpClient } from './http.js';
import { MOAT_API_VERSION } from './types.js';

export type Role = 'admin' | 'member' | 'viewer';

/** Absent fields are unlimited. Quantities as in resource limits: cpu "2" or "500m", memory/storage "8Gi". */
export interface Quota {
  sandboxes?: number;
  cpu?: string;
  memory?: string;
  storage?: string;
}

export interface Whoami {
  user: string;
  role: Role;
  /** Set for a key scoped to one agent. */
  agent?: string;
  keyId: string;
  /** Where the key works by default: its agent's namespace, or its user's default agent's. */
  namespace: string;
  namespaces: string[];
}

export interface User {
  name: string;
  role: Role;
  quota: Quota;
  createdAt: string;
}

export interface Agent {
  user: string;
  name: string;
  namespace: string;
  quota: Quota;
  createdAt: string;
}

export interface ApiKeyInfo {
  id: string;
  name: string;
  user: string;
  agent?: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
}

/** Only the answer to a create holds the key itself. */
export interface NewApiKey extends ApiKeyInfo {
  key: string;
}

const BASE = `/apis/${MOAT_API_VERSION}`;
const enc = encodeURIComponent;

/** Users, roles and quotas: an admin's key. */
export class UsersApi {
  constructor(private readonly http: HttpClient) {}

  async list(): Promise<User[]> {
    return (await this.http.json<{ items: User[] }>('GET', `${BASE}/users`)).items;
  }

  get(name: string): Promise<User> {
    return this.http.json('GET', `${BASE}/users/${enc(name)}`);
  }

  /** The answer carries the new user's first API key (`key.key`), shown only this once. */
  create(opts: { name: string; role: Role; quota?: Quota }): Promise<User & { key: NewApiKey }> {
    return this.http.json('POST', `${BASE}/users`, { json: opts });
  }

  update(name: string, change: { role?: Role; quota?: Quota }): Promise<User> {
    return this.http.json('PATCH', `${BASE}/users/${enc(name)}`, { json: change });
  }

  async delete(name: string): Promise<void> {
    await this.http.request('DELETE', `${BASE}/users/${enc(name)}`);
  }
}

/** A user's agents; `user` defaults to the key's own user. */
export class AgentsApi {
  constructor(
    private readonly http: HttpClient,
    private readonly me: () => Promise<Whoami>,
  ) {}

  private async base(user?: string) {
    return `${BASE}/users/${enc(user ?? (await this.me()).user)}/agents`;
  }

  async list(opts: { user?: string } = {}): Promise<Agent[]> {
    return (await this.http.json<{ items: Agent[] }>('GET', await this.base(opts.user))).items;
  }

  async get(name: string, opts: { user?: string } = {}): Promise<Agent> {
    return this.http.json('GET', `${await this.base(opts.user)}/${enc(name)}`);
  }

  async create(name: string, opts: { user?: string; quota?: Quota } = {}): Promise<Agent> {
    return this.http.json('POST', await this.base(opts.user), { json: { name, ...(opts.quota ? { quota: opts.quota } : {}) } });
  }

  /** Admins only. */
  async setQuota(name: string, quota: Quota, opts: { user?: string } = {}): Promise<Agent> {
    return this.http.json('PATCH', `${await this.base(opts.user)}/${enc(name)}`, { json: { quota } });
  }

  async delete(name: string, opts: { user?: string } = {}): Promise<void> {
    await this.http.request('DELETE', `${await this.base(opts.user)}/${enc(name)}`);
  }
}

/** API keys of a user (or of one of its agents); `user` defaults to the key's own user. */
export class KeysApi {
  constructor(
    private readonly http: HttpClient,
    private readonly me: () => Promise<Whoami>,
  ) {}

  private async base(user?: string) {
    return `${BASE}/users/${enc(user ?? (await this.me()).user)}/keys`;
  }

  async list(opts: { user?: string } = {}): Promise<ApiKeyInfo[]> {
    return (await this.http.json<{ items: ApiKeyInfo[] }>('GET', await this.base(opts.user))).items;
  }

  async create(opts: { name: string; agent?: string; expiresAt?: Date | string; user?: string }): Promise<NewApiKey> {
    const { user, expiresAt, ...rest } = opts;
    return this.http.json('POST', await this.base(user), { json: { ...rest, ...(expiresAt ? { expiresAt: new Date(expiresAt).toISOString() } : {}) } });
  }

  async revoke(id: string, opts: { user?: string } = {}): Promise<ApiKeyInfo> {
    return this.http.json('DELETE', `${await this.base(opts.user)}/${enc(id)}`);
  }
}
