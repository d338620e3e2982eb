// Moat installed into the dev cluster as a user installs it (deploy/kubernetes, through the overlay
// test/cluster/moat-in-cluster/): two replica pods of the image the dev cluster builds, one PostgreSQL pod, one
// Service. Both replicas answer through the Service, any call works through either, exactly one leads, and the
// other takes over when the leader's pod goes; `kubectl delete -k` leaves nothing.
//
// The Service is reached from inside a replica's pod, as in-cluster clients reach it: its ClusterIP goes through
// kube-proxy's rules, to the pod itself (hairpin) or to the other one on the same bridge. Calls meant for one
// replica go through `kubectl port-forward` to that pod: the host has no route into the pods' network.
import assert from 'node:assert/strict';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, test } from 'node:test';
import { Moat } from '@moat/sdk';
import { pythonTemplateBody } from '../helpers/cluster-moat.js';
import { devClusterImages, devClusterUp, type DevCluster } from '../helpers/dev-cluster.js';

const NS = 'moat-in-cluster'; // the overlay's
const AGENT = 'incluster'; // the overlay's namespace admin-incluster is this agent's
const OVERLAY = join(import.meta.dirname, 'moat-in-cluster');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: DevCluster;
let dir: string;
const forwards: ChildProcessWithoutNullStreams[] = [];

/** The overlay with what this run makes: the images' tags and the Secret of keys, generated afresh. */
async function kustomization(images: { moat: string; postgres: string }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'moat-in-cluster-'));
  const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  await writeFile(join(d, 'audit-signing.pem'), pem);
  const [moat, postgres] = [images.moat, images.postgres].map((ref) => ({
    newName: ref.slice(0, ref.lastIndexOf(':')),
    newTag: ref.slice(ref.lastIndexOf(':') + 1),
  }));
  const k = {
    apiVersion: 'kustomize.config.k8s.io/v1beta1',
    kind: 'Kustomization',
    resources: [relative(d, OVERLAY)], // kustomize takes no absolute path
    images: [
      { name: 'moat', ...moat },
      { name: 'postgres', ...postgres },
    ],
    secretGenerator: [
      {
        name: 'moat-keys',
        namespace: NS,
        literals: [`master-key=${randomBytes(32).toString('base64')}`, `postgres-password=${randomBytes(16).toString('hex')}`],
        files: ['audit-signing.pem'],
        options: { disableNameSuffixHash: true },
      },
    ],
  };
  await writeFile(join(d, 'kustomization.yaml'), JSON.stringify(k, null, 2)); // JSON is YAML
  return d;
}

interface Replica {
  pod: string;
  url: string;
}

const moatPods = async () =>
  (await cluster.kubectl('get', 'pods', '-n', NS, '-l', 'app.kubernetes.io/name=moat', '-o', 'jsonpath={.items[*].metadata.name}')).split(' ').filter(Boolean);

async function forward(pod: string): Promise<Replica> {
  const { url, child } = await cluster.portForward(`pod/${pod}`, 6628, '-n', NS);
  forwards.push(child);
  return { pod, url };
}

const call = (r: Replica, key: string, path: string, json?: unknown) =>
  fetch(r.url + path, {
    method: json === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${key}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
  });

const leads = async (r: Replica, key: string) =>
  ((await (await call(r, key, '/apis/moat.dev/v1/info')).json()) as { backend: { leads: boolean } }).backend.leads;

/** The one replica that leads, once exactly one does (two at once fails at once). */
async function leader(replicas: Replica[], key: string, timeoutMs: number): Promise<Replica> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const leading = [];
    for (const r of replicas) if (await leads(r, key)) leading.push(r);
    assert.ok(leading.length <= 1, 'two replicas lead at once');
    if (leading.length === 1) return leading[0]!;
    if (Date.now() > deadline) throw new Error(`no replica leads after ${timeoutMs / 1000} s`);
    await sleep(250);
  }
}

let applied = 0;

/** What a failed rollout needs to be understood: the pods, their events, and every container's last words. */
async function podReport(): Promise<string> {
  const parts = [await cluster.kubectl('get', 'pods,services,endpointslices', '-n', NS, '-o', 'wide')];
  parts.push(await cluster.kubectl('get', 'events', '-n', NS, '--sort-by=.lastTimestamp'));
  const pods = (await cluster.kubectl('get', 'pods', '-n', NS, '-o', 'jsonpath={.items[*].metadata.name}')).split(' ').filter(Boolean);
  for (const pod of pods) parts.push(await cluster.kubectl('logs', '-n', NS, pod, '--all-containers', '--prefix', '--tail=20').catch((e: Error) => e.message));
  return parts.join('\n');
}

before(async () => {
  cluster = await devClusterUp();
  const images = await devClusterImages();
  dir = await kustomization(images);
  await cluster.kubectl('delete', '-k', dir, '--ignore-not-found', '--wait'); // what an interrupted run left
  const start = Date.now();
  await cluster.kubectl('apply', '-k', dir);
  await cluster.kubectl('rollout', 'status', '-n', NS, 'deployment/postgres', 'deployment/moat', '--timeout=180s').catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await podReport()}`);
  });
  applied = Date.now() - start;
});

after(async () => {
  for (const f of forwards) f.kill();
  if (dir) {
    await cluster.kubectl('delete', '-k', dir, '--ignore-not-found', '--wait=false').catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
});

test('two replicas in pods behind one Service: both serve, either works for any call, one leads, the other takes over', async (t) => {
  t.diagnostic(`apply -k to both replicas Ready: ${(applied / 1000).toFixed(1)} s`);
  const pods = await moatPods();
  assert.equal(pods.length, 2, pods.join(' '));
  for (const pod of pods) {
    const ready = await cluster.kubectl('get', 'pod', pod, '-n', NS, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}');
    assert.equal(ready, 'True', pod);
  }
  // Each replica made an admin key at its first start; the database is shared, so either key works on both.
  const logs = await cluster.kubectl('logs', '-n', NS, pods[0]!, '-c', 'moat');
  const key = /Admin API key: (\S+)/.exec(logs)?.[1];
  assert.ok(key, logs);
  const replicas = await Promise.all(pods.map(forward));
  const [a, b] = replicas as [Replica, Replica];
  for (const r of replicas) {
    const res = await call(r, key, '/apis/moat.dev/v1/whoami');
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-moat-replica'), r.pod, 'the replica header names the pod');
  }

  // Through the Service's ClusterIP, from inside a's pod: both replicas answer (kube-proxy picks at random).
  const clusterIp = (await cluster.kubectl('get', 'service', 'moat', '-n', NS, '-o', 'jsonpath={.spec.clusterIP}')).trim();
  // A new connection per call (no keep-alive): kube-proxy picks a backend per connection.
  const probe = `import { get } from 'node:http';
    const seen = {};
    for (let i = 0; i < 40; i++) {
      const k = await new Promise((resolve, reject) =>
        get({ host: '${clusterIp}', port: 6628, path: '/apis/moat.dev/v1/whoami', agent: false, headers: { authorization: 'Bearer ' + process.argv[1] } }, (r) => {
          r.resume();
          r.on('end', () => resolve(r.statusCode + ' ' + r.headers['x-moat-replica']));
        }).on('error', reject));
      seen[k] = (seen[k] ?? 0) + 1;
    }
    console.log(JSON.stringify(seen));`;
  // kube-proxy learns of a newly Ready pod a moment after the EndpointSlice has it: batches until both answered.
  const seen: Record<string, number> = {};
  const want = pods.map((p) => `200 ${p}`).sort();
  for (const deadline = Date.now() + 30_000; Object.keys(seen).length < want.length && Date.now() < deadline;) {
    const batch = JSON.parse(await cluster.kubectl('exec', '-n', NS, a.pod, '-c', 'moat', '--', 'node', '--input-type=module', '-e', probe, key)) as Record<
      string,
      number
    >;
    for (const [k, n] of Object.entries(batch)) seen[k] = (seen[k] ?? 0) + n;
  }
  t.diagnostic(`calls through the Service from ${a.pod}: ${JSON.stringify(seen)}`);
  const slices = await cluster.kubectl('get', 'endpointslices', '-n', NS, '-o', 'wide');
  assert.deepEqual(Object.keys(seen).sort(), want, slices);

  // An agent and its template through a, a sandbox created through a and used through b.
  assert.equal((await call(a, key, '/apis/moat.dev/v1/users/admin/agents', { name: AGENT })).status, 201);
  const ns = `admin-${AGENT}`;
  const template = await call(
    b,
    key,
    `/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${ns}/sandboxtemplates`,
    pythonTemplateBody('python', cluster.pythonImage),
  );
  assert.equal(template.status, 201, await template.text());
  const onA = new Moat({ url: a.url, apiKey: key, namespace: ns });
  const onB = new Moat({ url: b.url, apiKey: key, namespace: ns });
  const sbx = await onA.sandboxes.create({ template: 'python', timeoutSeconds: 300 });
  try {
    const there = await onB.sandboxes.get(sbx.name);
    assert.equal(there.resource.metadata.uid, sbx.resource.metadata.uid);
    assert.equal((await there.exec(['sh', '-c', 'echo "$((6 * 7))"'])).stdout, '42\n');
    await sbx.files.write('/root/from-a', 'written through replica a');
    assert.equal(await there.files.readText('/root/from-a'), 'written through replica a');
  } finally {
    await onB.sandboxes.delete(sbx.name);
  }

  // Exactly one leads; its pod goes; the other takes the Lease, and the Deployment brings a new pod up.
  const first = await leader(replicas, key, 30_000);
  const other = replicas.find((r) => r !== first)!;
  const lease = async () =>
    (JSON.parse(await cluster.kubectl('get', 'lease', 'moat', '-n', NS, '-o', 'json')) as { spec: { holderIdentity: string; leaseTransitions?: number } }).spec;
  assert.ok((await lease()).holderIdentity.startsWith(`${first.pod}-`), JSON.stringify(await lease()));
  const deleted = Date.now();
  await cluster.kubectl('delete', 'pod', first.pod, '-n', NS, '--wait=false');
  assert.equal(await leader([other], key, 40_000), other);
  t.diagnostic(`the leader's pod deleted: ${other.pod} leads after ${((Date.now() - deleted) / 1000).toFixed(1)} s`);
  const taken = await lease();
  assert.ok(taken.holderIdentity.startsWith(`${other.pod}-`), JSON.stringify(taken));
  assert.ok((taken.leaseTransitions ?? 0) >= 1, JSON.stringify(taken));
  await cluster.kubectl('rollout', 'status', '-n', NS, 'deployment/moat', '--timeout=120s');
  const now = await moatPods();
  assert.equal(now.length, 2, now.join(' '));
  assert.ok(now.includes(other.pod) && !now.includes(first.pod), now.join(' '));
  const fresh = await forward(now.find((p) => p !== other.pod)!);
  assert.equal(await leads(fresh, key), false, 'the new pod does not lead');
  t.diagnostic(`a new pod ${fresh.pod} is Ready ${((Date.now() - deleted) / 1000).toFixed(1)} s after the delete`);
});

test('kubectl delete -k leaves nothing of the install: no namespaces, pods, sandboxes, leases or cluster roles', async (t) => {
  for (const f of forwards) f.kill();
  const start = Date.now();
  await cluster.kubectl('delete', '-k', dir, '--wait', '--timeout=180s');
  t.diagnostic(`delete -k: ${((Date.now() - start) / 1000).toFixed(1)} s`);
  const left = await cluster.kubectl(
    'get',
    'pods,sandboxes,sandboxclaims,sandboxtemplates,leases',
    '--all-namespaces',
    '-o',
    'jsonpath={range .items[*]}{.metadata.namespace}/{.kind}/{.metadata.name}{"\\n"}{end}',
  );
  const ours = left.split('\n').filter((l) => l.startsWith(`${NS}/`) || l.startsWith(`admin-${AGENT}/`));
  assert.deepEqual(ours, []);
  for (const what of [`namespace/${NS}`, `namespace/admin-${AGENT}`, 'clusterrole/moat', 'clusterrolebinding/moat']) {
    assert.equal((await cluster.kubectl('get', what, '--ignore-not-found', '-o', 'name')).trim(), '', what);
  }
});
