import { alreadyExists, assertName, invalid, notFound, type Sandbox, type SandboxSpec } from '@moat/core';
import type { Actor, AuditLog } from '../audit/log.js';
import { isUniqueViolation } from '../store/errors.js';
import type { SecretTable } from '../store/schema.js';
import type { Store } from '../store/store.js';
import type { Keyring } from './keyring.js';

/** What the API shows of a secret: never its value. */
export interface SecretInfo {
  namespace: string;
  name: string;
  createdAt: string;
  updatedAt: string;
}

const info = (r: SecretTable): SecretInfo => ({ namespace: r.namespace, name: r.name, createdAt: r.created_at, updatedAt: r.updated_at });
const aad = (namespace: string, name: string) => `moat secret ${namespace}/${name}`;

/**
 * Write-only secrets of a namespace. Values go in through the API and come
 * out only where they are used (`reveal`: the gateway's injection, a
 * sandbox's opted-in environment), and every such use is an audit event.
 */
export class Secrets {
  constructor(
    private readonly store: Store,
    private readonly keyring: Keyring,
    private readonly audit: AuditLog,
  ) {}

  private get db() {
    return this.store.db;
  }

  async list(namespace: string): Promise<SecretInfo[]> {
    return (await this.db.selectFrom('secrets').selectAll().where('namespace', '=', namespace).orderBy('name').execute()).map(info);
  }

  async get(namespace: string, name: string): Promise<SecretInfo> {
    return info(await this.row(namespace, name));
  }

  async create(namespace: string, name: string, value: string): Promise<SecretInfo> {
    assertName(name, 'secret name');
    const now = new Date().toISOString();
    try {
      await this.db
        .insertInto('secrets')
        .values({ namespace, name, ...this.keyring.seal(value, aad(namespace, name)), created_at: now, updated_at: now })
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw alreadyExists(`secret "${name}" already exists in namespace "${namespace}"`, { kind: 'secrets', name });
      throw err;
    }
    return this.get(namespace, name);
  }

  async replace(namespace: string, name: string, value: string): Promise<SecretInfo> {
    await this.row(namespace, name);
    await this.db
      .updateTable('secrets')
      .set({ ...this.keyring.seal(value, aad(namespace, name)), updated_at: new Date().toISOString() })
      .where('namespace', '=', namespace)
      .where('name', '=', name)
      .execute();
    return this.get(namespace, name);
  }

  async delete(namespace: string, name: string): Promise<void> {
    await this.row(namespace, name);
    await this.db.deleteFrom('secrets').where('namespace', '=', namespace).where('name', '=', name).execute();
  }

  /** The value, for `purpose` (an audit action such as `secrets.expose-env`), on behalf of `actor`. */
  async reveal(namespace: string, name: string, use: { actor: Actor; purpose: string; sandbox?: string }): Promise<string> {
    const event = { actor: use.actor, action: use.purpose, namespace, sandbox: use.sandbox, object: `secrets/${name}` };
    try {
      const value = this.keyring.open(await this.row(namespace, name), aad(namespace, name));
      await this.audit.record({ ...event, result: 'success' });
      return value;
    } catch (err) {
      await this.audit.record({ ...event, result: 'failed', detail: { error: (err as Error).message } });
      throw err;
    }
  }

  /** A spec may name only secrets its namespace holds (422 otherwise). */
  async checkRefs(namespace: string, spec: SandboxSpec): Promise<void> {
    const names = (spec.secrets ?? []).map((s) => s.name);
    if (!names.length) return;
    const have = new Set(
      (await this.db.selectFrom('secrets').select('name').where('namespace', '=', namespace).where('name', 'in', names).execute()).map((r) => r.name),
    );
    const missing = names.filter((n) => !have.has(n));
    if (missing.length)
      throw invalid(`spec.secrets: no secret ${missing.map((n) => `"${n}"`).join(', ')} in namespace "${namespace}" (create it with \`moat secrets create\`)`);
  }

  /** Only the secrets a sandbox opted into with `exposeAsEnv`; each reveal is audited. */
  async exposedEnv(sandbox: Sandbox, actor: Actor): Promise<Record<string, string>> {
    const env: Record<string, string> = {};
    for (const ref of sandbox.spec.secrets ?? []) {
      if (!ref.exposeAsEnv) continue;
      env[ref.exposeAsEnv] = await this.reveal(sandbox.metadata.namespace, ref.name, { actor, purpose: 'secrets.expose-env', sandbox: sandbox.metadata.name });
    }
    return env;
  }

  /** Re-encrypts everything not sealed with the current master key, in one transaction. */
  async reseal(): Promise<number> {
    return this.db.transaction().execute(async (tx) => {
      const rows = await tx.selectFrom('secrets').selectAll().where('key_id', '!=', this.keyring.currentId).execute();
      for (const r of rows) {
        const value = this.keyring.open(r, aad(r.namespace, r.name));
        await tx
          .updateTable('secrets')
          .set(this.keyring.seal(value, aad(r.namespace, r.name)))
          .where('namespace', '=', r.namespace)
          .where('name', '=', r.name)
          .execute();
      }
      return rows.length;
    });
  }

  rotateKey(): Promise<number> {
    return this.keyring.rotate(() => this.reseal());
  }

  private async row(namespace: string, name: string): Promise<SecretTable> {
    const r = await this.db.selectFrom('secrets').selectAll().where('namespace', '=', namespace).where('name', '=', name).executeTakeFirst();
    if (!r) throw notFound(`secret "${name}" not found in namespace "${namespace}"`, { kind: 'secrets', name });
    return r;
  }
}
