// The modules that query the store directly (identity, keys, audit, secrets, the gateway's config and usage,
// portal sessions, quotas, volumes), on SQLite and on PostgreSQL alike.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { FastifyRequest } from 'fastify';
import type { ApiContext } from '../src/api/context.js';
import { PortalSessions, SESSION_COOKIE } from '../src/api/routes/session.js';
import { AuditLog } from '../src/audit/log.js';
import { CheckpointSigner } from '../src/audit/signing.js';
import { authenticate, authenticateKeyId, createApiKey, listApiKeys, revokeApiKey } from '../src/auth/keys.js';
import { deleteGatewayConfig, getGatewayConfig, putGatewayConfig } from '../src/gateway/config.js';
import { addUsage, spentToday, today, usage } from '../src/gateway/usage.js';
import { Identity } from '../src/identity/identity.js';
import { Quotas } from '../src/identity/quotas.js';
import { Keyring } from '../src/secrets/keyring.js';
import { Secrets } from '../src/secrets/secrets.js';
import type { Store } from '../src/store/store.js';
import { VolumeService } from '../src/volumes/service.js';
import { silent, storedSandbox } from './fixtures.js';
import { onEachDatabase } from './postgres.js';

/** A store with a data dir beside it (keys, volumes), both gone after fn. */
async function withStore(open: () => Promise<Store>, fn: (store: Store, dir: string) => Promise<void>): Promise<void> {
  const store = await open();
  const dir = await mkdtemp(join(tmpdir(), 'moat-db-test-'));
  try {
    await fn(store, dir);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const auditOf = async (store: Store, dir: string) => AuditLog.open(store, await CheckpointSigner.open(join(dir, 'audit-signing.pem')), silent);

onEachDatabase((open) => {
  test('identity and keys: users, agents, namespaces, keys that authenticate until revoked or their user goes', () =>
    withStore(open, async (store) => {
      const identity = new Identity(store);
      await identity.ensureBootstrapAdmin();
      await identity.ensureBootstrapAdmin();
      await identity.createUser('bob', 'member', { sandboxes: 2 });
      await identity.createUser('alice', 'viewer', {});
      await assert.rejects(identity.createUser('bob', 'member', {}), /already exists/);
      assert.deepEqual(
        (await identity.listUsers()).map((u) => u.name),
        ['admin', 'alice', 'bob'],
      );
      assert.deepEqual((await identity.updateUser('alice', { role: 'member' })).role, 'member');
      assert.deepEqual((await identity.getUser('bob')).quota, { sandboxes: 2 });
      const coder = await identity.createAgent('alice', 'coder', {});
      assert.equal(coder.namespace, 'alice-coder');
      assert.deepEqual(await identity.owner('alice-coder'), { user: 'alice', agent: 'coder' });
      assert.equal((await identity.owner('default'))?.user, 'admin');

      const first = await createApiKey(store, { name: 'first', user: 'alice' });
      const scoped = await createApiKey(store, { name: 'scoped', user: 'alice', agent: 'coder' });
      const p = await authenticate(store, identity, first.key);
      assert.equal(p.role, 'member');
      assert.deepEqual([...p.namespaces.keys()].sort(), ['alice', 'alice-coder']);
      assert.deepEqual([...(await authenticate(store, identity, scoped.key)).namespaces.keys()], ['alice-coder']);
      assert.equal((await authenticateKeyId(store, identity, first.id)).keyId, first.id);
      assert.deepEqual(
        (await listApiKeys(store, 'alice')).map((k) => k.name),
        ['first', 'scoped'],
      );
      const revoked = await revokeApiKey(store, 'alice', first.id);
      assert.ok(revoked.revokedAt);
      assert.equal((await revokeApiKey(store, 'alice', first.id)).revokedAt, revoked.revokedAt, 'revoking twice changes nothing');
      await assert.rejects(authenticate(store, identity, first.key), /invalid API key/);

      // An agent that holds objects cannot go (the count comes back a number on both databases).
      await store.insertSandbox({ ...storedSandbox('box', 'Running'), metadata: { ...storedSandbox('box', 'Running').metadata, namespace: 'alice-coder' } });
      await assert.rejects(identity.deleteAgent('alice', 'coder'), /still holds 1 object/);
      await store.deleteSandbox('uid-box');
      await identity.deleteUser('alice');
      await assert.rejects(authenticate(store, identity, scoped.key), /invalid API key/);
      assert.deepEqual(await listApiKeys(store, 'alice'), []);
    }));

  test('audit: a chain with signed checkpoints, queries by actor, namespace and page, and verify finds an edit', () =>
    withStore(open, async (store, dir) => {
      const audit = await auditOf(store, dir);
      const inputs = Array.from({ length: 130 }, (_, i) => ({
        actor: { user: i % 2 ? 'alice' : 'bob', source: '127.0.0.1' },
        action: 'POST sandboxes',
        namespace: i % 2 ? 'alice' : 'bob',
        result: 'success' as const,
        detail: { i },
      }));
      await Promise.all(inputs.map((e) => audit.record(e)));
      await audit.flush();
      assert.deepEqual(await audit.verify(), { ok: true, events: 130, checkpoints: 2 });
      assert.equal((await audit.query({ user: 'alice' })).length, 65);
      const page = await audit.query({ after: 100, limit: 10 });
      assert.deepEqual(
        page.map((e) => e.seq),
        Array.from({ length: 10 }, (_, i) => 101 + i),
      );
      const visible = await audit.query({ visibleTo: { namespaces: ['alice'], user: 'nobody' } });
      assert.ok(visible.length === 65 && visible.every((e) => e.namespace === 'alice'));
      assert.equal((await audit.query({ since: new Date(Date.now() + 60_000).toISOString() })).length, 0);

      // A reopened log continues the same chain.
      await (await auditOf(store, dir)).record(inputs[0]!);
      assert.deepEqual(await audit.verify(), { ok: true, events: 131, checkpoints: 2 });
      await store.db.updateTable('audit_events').set({ detail: '{"i":-1}' }).where('seq', '=', 7).execute();
      const report = await audit.verify();
      assert.equal(report.ok, false);
      assert.equal(report.brokenAt, 7);
    }));

  test('secrets: write-only values, audited reveals, references checked, a key rotation re-encrypts them', () =>
    withStore(open, async (store, dir) => {
      const audit = await auditOf(store, dir);
      const secrets = new Secrets(store, await Keyring.load(dir), audit);
      await secrets.create('ns', 'b-key', 'one');
      await secrets.create('ns', 'a-key', 'two');
      await assert.rejects(secrets.create('ns', 'a-key', 'again'), /already exists/);
      assert.deepEqual(
        (await secrets.list('ns')).map((s) => s.name),
        ['a-key', 'b-key'],
      );
      const actor = { user: 'u', source: 'test' };
      assert.equal(await secrets.reveal('ns', 'a-key', { actor, purpose: 'secrets.test' }), 'two');
      await secrets.replace('ns', 'a-key', 'three');
      await assert.rejects(
        secrets.checkRefs('ns', { ...storedSandbox('x', 'Running').spec, secrets: [{ name: 'a-key' }, { name: 'gone' }] }),
        /no secret "gone"/,
      );
      assert.equal(await secrets.rotateKey(), 2);
      assert.equal(await secrets.reveal('ns', 'a-key', { actor, purpose: 'secrets.test' }), 'three');
      await secrets.delete('ns', 'b-key');
      await assert.rejects(secrets.get('ns', 'b-key'), /not found/);
      assert.equal((await audit.query({ action: 'secrets.test' })).length, 2);
    }));

  test('gateway: config upserts, usage counters add up under concurrent calls, in order', () =>
    withStore(open, async (store) => {
      await putGatewayConfig(store, 'ns', { models: ['a'] });
      await putGatewayConfig(store, 'ns', { models: ['b*'] });
      assert.deepEqual(await getGatewayConfig(store, 'ns'), { models: ['b*'] });
      assert.equal(await deleteGatewayConfig(store, 'ns'), true);
      assert.equal(await deleteGatewayConfig(store, 'ns'), false);
      const call = { namespace: 'ns', sandbox: 'box', user: 'u', agent: 'default', inputTokens: 3, outputTokens: 4 };
      await Promise.all(Array.from({ length: 20 }, () => addUsage(store, { ...call, model: 'm-2' })));
      await addUsage(store, { ...call, model: 'M-1', inputTokens: 2 ** 40 });
      const rows = await usage(store, 'ns', today());
      assert.deepEqual(
        rows.map((r) => [r.model, r.requests, r.inputTokens]),
        [
          ['M-1', 1, 2 ** 40],
          ['m-2', 20, 60],
        ],
      );
      assert.deepEqual(await spentToday(store, 'ns'), { requests: 21, tokens: 2 ** 40 + 4 + 20 * 7 });
    }));

  test('portal sessions: opened for a key, found by cookie, gone when closed', () =>
    withStore(open, async (store) => {
      const identity = new Identity(store);
      await identity.ensureBootstrapAdmin();
      const key = await createApiKey(store, { name: 'k', user: 'admin' });
      const sessions = new PortalSessions({ store, identity } as ApiContext);
      const { id, session } = await sessions.open(await authenticate(store, identity, key.key));
      const req = { cookies: { [SESSION_COOKIE]: id }, headers: {}, method: 'GET' } as unknown as FastifyRequest;
      assert.equal((await sessions.authenticate(req, false))?.keyId, key.id);
      await sessions.close(session);
      await assert.rejects(sessions.authenticate(req, false), /session has ended/);
    }));

  test('quotas and volumes: concurrent admissions never pass the limit; volume sizes up to 1 TiB round-trip', () =>
    withStore(open, async (store, dir) => {
      const identity = new Identity(store);
      await identity.createUser('bob', 'member', { sandboxes: 1, storage: '2Ti' });
      const quotas = new Quotas(store, identity);
      const spec = storedSandbox('x', 'Running').spec;
      const results = await Promise.allSettled(
        ['one', 'two', 'three'].map((name) =>
          quotas.admit('bob', spec, () =>
            store.insertSandbox({ ...storedSandbox(name, 'Running'), metadata: { ...storedSandbox(name, 'Running').metadata, namespace: 'bob' } }),
          ),
        ),
      );
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      assert.match(String((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason), /quota exceeded for user "bob": sandboxes/);

      const volumes = await VolumeService.open(store, quotas, join(dir, 'volumes'));
      const fill = (path: string) => writeFile(path, '');
      const big = await volumes.createFrom('bob', 'big', 2 ** 40, fill);
      assert.equal(big.sizeBytes, 2 ** 40);
      await assert.rejects(volumes.createFrom('bob', 'big', 2 ** 24, fill), /already exists/);
      await assert.rejects(volumes.createFrom('bob', 'more', 2 ** 40, fill), /quota exceeded for user "bob": storage/);
      await volumes.createFrom('bob', 'small', 2 ** 24, fill);
      assert.deepEqual(
        (await volumes.list('bob')).map((v) => [v.name, v.sizeBytes, v.retain]),
        [
          ['big', 2 ** 40, true],
          ['small', 2 ** 24, true],
        ],
      );
      assert.equal(await volumes.bytesIn(['bob', 'elsewhere']), 2 ** 40 + 2 ** 24);
      await volumes.delete('bob', 'big');
      assert.equal(await volumes.bytesIn(['bob']), 2 ** 24);
    }));
});
