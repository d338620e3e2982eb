import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat } from '@moat/sdk';
import SQLite from 'better-sqlite3';
import { NS, sandboxBody, sh, startTestServer, type TestServer } from '../../helpers/server.js';

const SECRETS = '/apis/moat.dev/v1/namespaces/default/secrets';
const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');
const VALUE = `tok-${randomBytes(12).toString('hex')}`;

/** A sandbox body naming secrets in spec.secrets. */
const withSecrets = (name: string, secrets: { name: string; exposeAsEnv?: string }[], command?: string[]) => {
  const body = sandboxBody(name, command ? { command } : {}) as { spec: Record<string, unknown> };
  body.spec.secrets = secrets;
  return body;
};

async function ready(server: TestServer, body: unknown) {
  const res = await server.api(NS, { method: 'POST', json: body });
  assert.equal(res.status, 201, await res.text());
  const name = (body as { metadata: { name: string } }).metadata.name;
  assert.equal((await server.api(`${NS}/${name}/wait?timeoutSeconds=120`)).status, 200);
}

/**
 * Every file of the data dir that is not the master key: the store, its WAL, logs. Not the
 * sandboxes' own file systems (mounted under sandboxes*\/<uid>/): they hold what sandboxes wrote.
 */
async function dataDirHolds(dir: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  for (const f of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, f.name);
    if (f.isDirectory() && !f.name.startsWith('sandboxes')) hits.push(...(await dataDirHolds(p, needle)));
    else if (f.isFile() && /\.(db|db-wal|log)$/.test(f.name) && (await readFile(p)).includes(needle)) hits.push(p);
  }
  return hits;
}

describe('secrets', () => {
  let server: TestServer;
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'moat-secrets-'));
    server = await startTestServer({ dataDir });
  });
  after(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  test('write-only: answers never carry the value, the store holds only ciphertext', async () => {
    const created = await server.api(SECRETS, { method: 'POST', json: { name: 'tok', value: VALUE } });
    assert.equal(created.status, 201);
    const answers = [await created.text(), await (await server.api(SECRETS)).text(), await (await server.api(`${SECRETS}/tok`)).text()];
    assert.ok(
      answers.every((a) => !a.includes(VALUE)),
      answers.join('\n'),
    );
    assert.equal((await server.api(SECRETS, { method: 'POST', json: { name: 'tok', value: 'x' } })).status, 409);
    assert.equal((await server.api(SECRETS, { method: 'POST', json: { name: 'x', value: 'v', extra: 1 } })).status, 400);
    assert.equal((await server.api(SECRETS, { method: 'POST', json: { name: 'Bad_Name', value: 'v' } })).status, 400);

    const db = new SQLite(join(dataDir, 'moat.db'), { readonly: true });
    const row = db.prepare("SELECT * FROM secrets WHERE name = 'tok'").get() as { ciphertext: string; nonce: string; key_id: string };
    db.close();
    assert.ok(!JSON.stringify(row).includes(VALUE));
    assert.equal(Buffer.from(row.nonce, 'base64').length, 12);
    assert.deepEqual(await dataDirHolds(dataDir, VALUE), []);
    assert.ok(!(await (await server.api('/apis/moat.dev/v1/audit')).text()).includes(VALUE), 'nor the audit log');
  });

  test('a referenced secret stays out of the sandbox; exposeAsEnv puts it in, audited', async () => {
    await ready(server, withSecrets('hidden', [{ name: 'tok' }]));
    const look = await sh(server, 'hidden', `env; cat /proc/1/environ; grep -rsl ${VALUE} /etc /run /tmp /root /data /workspace || echo not found`);
    assert.equal(look.status, 200);
    assert.ok(!look.stdout.includes(VALUE) && !look.stderr.includes(VALUE), look.stdout);
    assert.match(look.stdout, /not found\n$/);

    await ready(server, withSecrets('exposed', [{ name: 'tok', exposeAsEnv: 'TOKEN' }], ['sh', '-c', 'echo "$TOKEN" > /tmp/main-saw; exec sleep infinity']));
    assert.equal((await sh(server, 'exposed', 'echo "$TOKEN"')).stdout, `${VALUE}\n`, 'execs get it');
    assert.equal((await sh(server, 'exposed', 'cat /tmp/main-saw')).stdout, `${VALUE}\n`, 'the main process got it');
    const events = (await (await server.api('/apis/moat.dev/v1/audit?action=secrets.expose-env')).json()) as {
      items: { sandbox: string; object: string; result: string; actor: { user: string } }[];
    };
    assert.ok(events.items.length >= 2);
    assert.ok(events.items.every((e) => e.sandbox === 'exposed' && e.object === 'secrets/tok' && e.result === 'success' && e.actor.user === 'admin'));

    const missing = await server.api(NS, { method: 'POST', json: withSecrets('nope', [{ name: 'ghost', exposeAsEnv: 'X' }]) });
    assert.equal(missing.status, 422);
    assert.match(((await missing.json()) as { message: string }).message, /no secret "ghost" in namespace "default"/);
    assert.equal((await server.api(`${NS}/nope`)).status, 404, 'nothing half-created');
    assert.equal((await server.api(NS, { method: 'POST', json: withSecrets('bad', [{ name: 'tok', exposeAsEnv: 'NOT-A-NAME' }]) })).status, 400);
  });

  test('SDK and CLI: values go in (the CLI reads stdin), only names come out', async () => {
    const moat = new Moat({ url: server.url, apiKey: server.adminKey });
    await moat.secrets.create('sdk-made', 'sdk-value-1');
    await moat.secrets.replace('sdk-made', 'sdk-value-2');
    const cli = (args: string[], input = '') =>
      new Promise<{ code: number; stdout: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, ...args], {
          env: { PATH: process.env.PATH ?? '', HOME: '/nonexistent', MOAT_URL: server.url, MOAT_API_KEY: server.adminKey },
        });
        let stdout = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.on('close', (code) => resolve({ code: code ?? -1, stdout }));
        child.stdin.end(input);
      });
    assert.equal((await cli(['secrets', 'create', 'cli-made'], 'cli-value\n')).code, 0);
    const listed = await cli(['secrets', 'list', '-o', 'json']);
    const names = (JSON.parse(listed.stdout) as { items: { name: string }[] }).items.map((i) => i.name);
    assert.ok(names.includes('sdk-made') && names.includes('cli-made'));
    assert.ok(!/sdk-value|cli-value/.test(listed.stdout));
    assert.deepEqual(await dataDirHolds(dataDir, 'cli-value'), []);
    await moat.secrets.delete('sdk-made');
    assert.equal((await cli(['secrets', 'delete', 'cli-made'])).code, 0);
    assert.deepEqual(
      (await moat.secrets.list()).map((i) => i.name),
      ['tok'],
    );
  });

  test('rotate-key re-encrypts every secret under a new master key; values survive, the old key is gone', async () => {
    const keyBefore = await readFile(join(dataDir, 'master.key'), 'utf8');
    const rotated = await server.api('/apis/moat.dev/v1/secrets/rotate-key', { method: 'POST' });
    assert.equal(rotated.status, 200);
    assert.deepEqual(await rotated.json(), { reencrypted: 1 });
    const keyAfter = await readFile(join(dataDir, 'master.key'), 'utf8');
    assert.notEqual(keyAfter, keyBefore);
    assert.deepEqual(
      (await readdir(dataDir)).filter((f) => f.startsWith('master.key')),
      ['master.key'],
    );
    assert.equal((await sh(server, 'exposed', 'echo "$TOKEN"')).stdout, `${VALUE}\n`);
    await server.api(`${SECRETS}/tok`, { method: 'PUT', json: { value: `${VALUE}-2` } });
    assert.equal((await sh(server, 'exposed', 'echo "$TOKEN"')).stdout, `${VALUE}-2\n`);
  });
});

// A describe of its own: its servers run after the one above has stopped (they share the test network).
describe('secrets under MOAT_MASTER_KEY', () => {
  test('MOAT_MASTER_KEY: a restart with a new key and the old one as previous re-encrypts at start', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'moat-secrets-env-'));
    const [k1, k2] = [randomBytes(32).toString('base64'), randomBytes(32).toString('base64')];
    const keyIds = () => {
      const db = new SQLite(join(dir, 'moat.db'), { readonly: true });
      const ids = (db.prepare('SELECT DISTINCT key_id FROM secrets').all() as { key_id: string }[]).map((r) => r.key_id);
      db.close();
      return ids;
    };
    const saved = { ...process.env };
    try {
      process.env.MOAT_MASTER_KEY = k1;
      let s = await startTestServer({ dataDir: dir });
      await s.api(SECRETS, { method: 'POST', json: { name: 'tok', value: VALUE } });
      const refused = await s.api('/apis/moat.dev/v1/secrets/rotate-key', { method: 'POST' });
      assert.equal(refused.status, 409);
      assert.match(((await refused.json()) as { message: string }).message, /MOAT_MASTER_KEY_PREVIOUS/);
      const before = keyIds();
      await s.close();
      assert.deepEqual(
        (await readdir(dir)).filter((f) => f.startsWith('master.key')),
        [],
        'no key file when the key comes from the environment',
      );

      process.env.MOAT_MASTER_KEY = k2;
      process.env.MOAT_MASTER_KEY_PREVIOUS = k1;
      s = await startTestServer({ dataDir: dir });
      assert.notDeepEqual(keyIds(), before);
      await ready(s, withSecrets('env-key', [{ name: 'tok', exposeAsEnv: 'TOKEN' }]));
      assert.equal((await sh(s, 'env-key', 'echo "$TOKEN"')).stdout, `${VALUE}\n`);
      await s.close();

      delete process.env.MOAT_MASTER_KEY_PREVIOUS;
      process.env.MOAT_MASTER_KEY = randomBytes(32).toString('base64');
      await assert.rejects(startTestServer({ dataDir: dir }), /sealed with master key .* which this server does not have/);
    } finally {
      process.env = saved;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a master key rotation cut short by a crash', () => {
  test('the next start finishes it, whichever step the crash came after', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'moat-secrets-crash-'));
    const file = (name: string) => join(dir, name);
    const keyFiles = async () => (await readdir(dir)).filter((f) => f.startsWith('master.key')).sort();
    const usable = async (s: TestServer, name: string) => {
      await ready(s, withSecrets(name, [{ name: 'tok', exposeAsEnv: 'TOKEN' }]));
      assert.equal((await sh(s, name, 'echo "$TOKEN"')).stdout, `${VALUE}\n`);
    };
    try {
      let s = await startTestServer({ dataDir: dir });
      await s.api(SECRETS, { method: 'POST', json: { name: 'tok', value: VALUE } });
      const k1 = await readFile(file('master.key'), 'utf8');
      await s.api('/apis/moat.dev/v1/secrets/rotate-key', { method: 'POST' });
      const k2 = await readFile(file('master.key'), 'utf8');
      await s.close();

      // After re-sealing under the new key, before any rename: the old key is still master.key.
      await writeFile(file('master.key'), k1);
      await writeFile(file('master.key.next'), k2);
      s = await startTestServer({ dataDir: dir });
      await usable(s, 'after-reseal');
      assert.deepEqual(await keyFiles(), ['master.key']);
      assert.equal(await readFile(file('master.key'), 'utf8'), k1, 'the secrets went back under the key the server started with');
      await s.close();

      // Between the two renames: no master.key, the new one still beside it.
      await rename(file('master.key'), file('master.key.previous'));
      await writeFile(file('master.key.next'), k2);
      s = await startTestServer({ dataDir: dir });
      await usable(s, 'between-renames');
      assert.deepEqual(await keyFiles(), ['master.key']);
      assert.equal(await readFile(file('master.key'), 'utf8'), k2);
      await s.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
