import { createHash } from 'node:crypto';
import { MoatError, badRequest } from '@moat/core';
import type { Secrets } from '../secrets/secrets.js';

export interface RegistryLogin {
  registry: string;
  username: string;
}

const PREFIX = 'registry-';

/**
 * A namespace's registry credentials, kept as its secrets (sealed, write-only,
 * rotated with the master key). Only the server's pulls read them: they never
 * enter a sandbox. One secret per registry, named after its host.
 */
export class RegistryLogins {
  constructor(private readonly secrets: Secrets) {}

  async login(namespace: string, registry: string, username: string, password: string): Promise<RegistryLogin> {
    const host = normalize(registry);
    if (!username || !password) throw badRequest('a registry login needs a username and a password');
    const value = JSON.stringify({ registry: host, username, password });
    const name = secretName(host);
    const exists = (await this.secrets.list(namespace)).some((s) => s.name === name);
    await (exists ? this.secrets.replace(namespace, name, value) : this.secrets.create(namespace, name, value));
    return { registry: host, username };
  }

  async logout(namespace: string, registry: string): Promise<void> {
    const host = normalize(registry);
    await this.secrets.delete(namespace, secretName(host)).catch((err: unknown) => {
      throw err instanceof MoatError && err.code === 404 ? new MoatError(404, 'NotFound', `no login for registry ${host} in namespace "${namespace}"`) : err;
    });
  }

  async list(namespace: string): Promise<RegistryLogin[]> {
    return (await this.all(namespace, 'images.registry-list')).map(({ registry, username }) => ({ registry, username }));
  }

  /** Every login with its password, for a builder's own pulls. */
  async all(namespace: string, purpose = 'images.registry-auth'): Promise<{ registry: string; username: string; password: string }[]> {
    const out = [];
    for (const s of await this.secrets.list(namespace)) {
      if (!s.name.startsWith(PREFIX)) continue;
      const v = await this.read(namespace, s.name, purpose);
      if (v) out.push(v);
    }
    return out;
  }

  /** For a pull: the namespace's credentials for `registry`, if it has any. */
  async credentials(namespace: string, registry: string): Promise<{ username: string; password: string } | undefined> {
    const host = normalize(registry);
    const have = (await this.secrets.list(namespace)).some((s) => s.name === secretName(host));
    if (!have) return undefined;
    const v = await this.read(namespace, secretName(host), 'images.registry-auth');
    return v && v.registry === host ? { username: v.username, password: v.password } : undefined;
  }

  private async read(namespace: string, name: string, purpose: string) {
    const raw = await this.secrets.reveal(namespace, name, { actor: { source: 'moat images' }, purpose });
    try {
      return JSON.parse(raw) as { registry: string; username: string; password: string };
    } catch {
      return undefined; // a secret the user named like ours by hand
    }
  }
}

/** Docker Hub's names for itself are one registry. */
export function normalize(registry: string): string {
  const host = registry
    .trim()
    .toLowerCase()
    .replace(/^https?:\/\//, '')
    .replace(/\/.*$/, '');
  if (!/^[a-z0-9.-]+(:\d{1,5})?$/.test(host)) throw badRequest(`invalid registry "${registry}": expected a host name with an optional :port`);
  return ['index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'].includes(host) ? 'docker.io' : host;
}

function secretName(host: string): string {
  const slug = host.replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  const hash = createHash('sha256').update(host).digest('hex').slice(0, 8);
  return `${PREFIX}${slug.slice(0, 63 - PREFIX.length - 9)}-${hash}`;
}

/** The logins in a docker `config.json` (`auths.<host>.auth` is base64 `user:password`). */
export function dockerConfigLogins(json: string): { registry: string; username: string; password: string }[] {
  let config: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    config = JSON.parse(json) as typeof config;
  } catch {
    throw badRequest('the docker config is not JSON');
  }
  const out = [];
  for (const [registry, a] of Object.entries(config.auths ?? {})) {
    let username = a.username;
    let password = a.password;
    if (a.auth) {
      const decoded = Buffer.from(a.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i > 0) [username, password] = [decoded.slice(0, i), decoded.slice(i + 1)];
    }
    if (username && password) out.push({ registry: normalize(registry), username, password });
  }
  if (!out.length) throw badRequest('the docker config has no usable logins under "auths" (credential helpers are not read)');
  return out;
}
