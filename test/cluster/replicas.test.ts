// Two Moat replicas in cluster mode sharing one PostgreSQL (MOAT_DATABASE_URL) and one cluster: either serves
// any call, because sandboxes live in the Kubernetes API and identity in the shared database.
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { Moat } from '@moat/sdk';
import { startServer, type RunningServer } from '@moat/server';
import { startPostgres, type TestPostgres } from '../../packages/server/test/postgres.js';
import { pythonTemplateBody } from '../helpers/cluster-moat.js';
import { devClusterUp, type DevCluster } from '../helpers/dev-cluster.js';

const NS = 'admin-replicas';
let cluster: DevCluster;
let pg: TestPostgres;
let dir: string;
const replicas: RunningServer[] = [];

before(async () => {
  cluster = await devClusterUp();
  await cluster.kubectl('delete', 'namespace', NS, '--ignore-not-found', '--wait');
  await cluster.kubectl('create', 'namespace', NS);
  pg = await startPostgres();
  const databaseUrl = await pg.database('replicas');
  dir = await mkdtemp(join(tmpdir(), 'moat-replicas-'));
  for (const i of [0, 1]) {
    const dataDir = join(dir, `r${i}`);
    await mkdir(dataDir, { recursive: true });
    // One secret in a real install: the master key for secrets and the audit signing key, the same for every replica.
    if (i === 1) for (const f of ['master.key', 'audit-signing.pem']) await copyFile(join(dir, 'r0', f), join(dataDir, f));
    replicas.push(
      await startServer({
        port: 0,
        dataDir,
        databaseUrl,
        replica: `r${i}`,
        kubernetes: { kubeconfig: cluster.kubeconfig },
        logger: pino({ level: process.env.MOAT_TEST_LOG ?? 'silent' }),
      }),
    );
  }
});

after(async () => {
  for (const r of replicas) await r.close();
  await pg?.stop();
  await cluster?.kubectl('delete', 'namespace', NS, '--ignore-not-found', '--wait=false');
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('two replicas on one database and one cluster serve the same agents, keys and sandboxes', async () => {
  const [a, b] = replicas as [RunningServer, RunningServer];
  const call = (r: RunningServer, path: string, json?: unknown) =>
    fetch(r.url + path, {
      method: json === undefined ? 'GET' : 'POST',
      headers: { authorization: `Bearer ${a.adminKey}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
    });
  // The admin key the first replica made works on the second; an agent made on one owns its namespace on both.
  const whoami = await call(b, '/apis/moat.dev/v1/whoami');
  assert.equal(whoami.status, 200);
  // Every answer names the replica that gave it, refusals too.
  assert.equal(whoami.headers.get('x-moat-replica'), 'r1');
  assert.equal((await fetch(a.url + '/apis/moat.dev/v1/whoami')).headers.get('x-moat-replica'), 'r0');
  assert.equal((await call(a, '/apis/moat.dev/v1/users/admin/agents', { name: 'replicas' })).status, 201);
  const template = await call(
    b,
    `/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxtemplates`,
    pythonTemplateBody('python', cluster.pythonImage),
  );
  assert.equal(template.status, 201, await template.text());

  const onA = new Moat({ url: a.url, apiKey: a.adminKey, namespace: NS });
  const onB = new Moat({ url: b.url, apiKey: a.adminKey, namespace: NS });
  const sbx = await onA.sandboxes.create({ template: 'python', timeoutSeconds: 120 });
  try {
    // Created through one replica, used through the other, and both see the same object.
    const there = await onB.sandboxes.get(sbx.name);
    assert.equal((await there.exec(['sh', '-c', 'echo "$((6 * 7))"'])).stdout, '42\n');
    await sbx.files.write('/root/from-a', 'written through replica a');
    assert.equal(await there.files.readText('/root/from-a'), 'written through replica a');
    assert.equal(there.resource.metadata.uid, sbx.resource.metadata.uid);
  } finally {
    await onB.sandboxes.delete(sbx.name);
  }
  assert.deepEqual(
    (await onA.sandboxes.list()).map((s) => s.name),
    [],
  );
});
