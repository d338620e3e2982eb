// Two Moat replicas in cluster mode (child processes, one PostgreSQL): the one holding the leader Lease enforces
// E2B timeouts. SIGKILL the leader: the other takes the Lease once it expires and carries on, killing what timed
// out and nothing else.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startPostgres, type TestPostgres } from '../../packages/server/test/postgres.js';
import { pythonTemplateBody } from '../helpers/cluster-moat.js';
import { devClusterUp, type DevCluster } from '../helpers/dev-cluster.js';
import type { TestServer } from '../helpers/server.js';
import { kill, spawnServer } from '../helpers/spawn-server.js';

const NS = 'admin-leader';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let cluster: DevCluster;
let pg: TestPostgres;
let dir: string;
const replicas: { child: ChildProcess; server: TestServer }[] = [];

before(async () => {
  cluster = await devClusterUp();
  await cluster.kubectl('delete', 'namespace', NS, '--ignore-not-found', '--wait');
  await cluster.kubectl('create', 'namespace', NS);
  pg = await startPostgres();
  const env = { KUBECONFIG: cluster.kubeconfig, MOAT_DATABASE_URL: await pg.database('leader'), MOAT_K8S_NAMESPACE: NS };
  dir = await mkdtemp(join(tmpdir(), 'moat-leader-'));
  for (const i of [0, 1]) {
    const dataDir = join(dir, `r${i}`);
    await mkdir(dataDir, { recursive: true });
    if (i === 1) for (const f of ['master.key', 'audit-signing.pem']) await copyFile(join(dir, 'r0', f), join(dataDir, f));
    replicas.push(await spawnServer(dataDir, env, 'cluster-server-process.ts'));
  }
});

after(async () => {
  for (const r of replicas) await kill(r.child);
  await pg?.stop();
  await cluster?.kubectl('delete', 'namespace', NS, '--ignore-not-found', '--wait=false');
  if (dir) await rm(dir, { recursive: true, force: true });
});

const leads = async (s: TestServer) => ((await (await s.api('/apis/moat.dev/v1/info')).json()) as { backend: { leads: boolean } }).backend.leads;

/** The replica that leads, once exactly one does. */
async function leader(candidates: TestServer[], timeoutMs: number): Promise<TestServer> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const leading = [];
    for (const s of candidates) if (await leads(s)) leading.push(s);
    if (leading.length === 1) return leading[0]!;
    assert.ok(leading.length === 0, 'two replicas lead at once');
    if (Date.now() > deadline) throw new Error(`no replica leads after ${timeoutMs / 1000} s`);
    await sleep(250);
  }
}

test('the leader is killed: the other replica takes the Lease and enforces the E2B timeouts, once', async () => {
  const servers = replicas.map((r) => r.server);
  const first = await leader(servers, 30_000);
  const other = servers.find((s) => s !== first)!;
  // An agent and its key, made through one replica (the database is shared).
  assert.equal((await first.api('/apis/moat.dev/v1/users/admin/agents', { method: 'POST', json: { name: 'leader' } })).status, 201);
  const keyRes = await first.api('/apis/moat.dev/v1/users/admin/keys', { method: 'POST', json: { name: 'e2b', agent: 'leader' } });
  const key = ((await keyRes.json()) as { key: string }).key;
  const template = await first.api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxtemplates`, {
    method: 'POST',
    json: pythonTemplateBody('python', cluster.pythonImage),
  });
  assert.equal(template.status, 201, await template.text());

  // E2B sandboxes made through the replica that does not lead: one that times out soon, one that must outlive the test.
  const e2b = async (timeout: number) => {
    const r = await fetch(`${other.url}/sandboxes`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json' },
      body: JSON.stringify({ templateID: 'python', timeout }),
    });
    const body = await r.text();
    assert.equal(r.status, 201, body);
    return (JSON.parse(body) as { sandboxID: string }).sandboxID;
  };
  const [short, long] = [await e2b(25), await e2b(600)];
  const created = Date.now();

  const killed = replicas.find((r) => r.server === first)!;
  await kill(killed.child);
  const next = await leader([other], 40_000);
  assert.equal(next, other);
  const lease = JSON.parse(await cluster.kubectl('get', 'lease', 'moat', '-n', NS, '-o', 'json')) as { spec: { leaseTransitions: number } };
  assert.ok(lease.spec.leaseTransitions >= 1, JSON.stringify(lease.spec));

  // The new leader kills the short one at its timeout (give or take a reload), and leaves the long one.
  const claims = async () => (await cluster.kubectl('get', 'sandboxclaims', '-n', NS, '-o', 'jsonpath={.items[*].metadata.name}')).split(' ').filter(Boolean);
  for (;;) {
    const names = await claims();
    if (!names.includes(short)) break;
    assert.ok(Date.now() - created < 25_000 + 30_000, `${short} outlived its timeout by 30 s: ${names.join(' ')}`);
    await sleep(500);
  }
  assert.deepEqual(await claims(), [long]);
  const list = (await (await fetch(`${other.url}/sandboxes`, { headers: { 'x-api-key': key } })).json()) as { sandboxID: string }[];
  assert.deepEqual(
    list.map((s) => s.sandboxID),
    [long],
  );
});
