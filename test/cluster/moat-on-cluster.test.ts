// Moat in cluster mode (`moat server --kubernetes`) on the dev cluster: a real Kubernetes with agent-sandbox's
// controller. Moat's SDK and CLI against it (test/e2b/on-cluster.test.ts: the E2B SDK); hibernation and waking on
// use; bad input.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat, MoatError } from '@moat/sdk';
import { clusterServer, startClusterMoat, type ClusterMoat } from '../helpers/cluster-moat.js';
import { runProcess } from '../helpers/run-process.js';

// The namespace of the admin's agent `e2e`: each Moat agent's namespace is a Kubernetes namespace of that name.
const LIMITED_NS = 'moat-e2e-limited';
const CLI = join(import.meta.dirname, '../../packages/cli/dist/main.js');

describe('Moat on Kubernetes (moat server --kubernetes)', () => {
  let m: ClusterMoat;
  let NS: string;
  let moat: Moat;
  const api = (path: string, init?: RequestInit & { json?: unknown }) => m.api(path, init);

  before(async () => {
    m = await startClusterMoat('e2e');
    NS = m.namespace;
    await m.cluster.kubectl('delete', 'namespace', LIMITED_NS, '--ignore-not-found', '--wait');
    moat = new Moat({ url: m.server.url, apiKey: m.server.adminKey, namespace: NS });
    await m.pythonTemplate('python');
    const pool = await api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxwarmpools`, {
      method: 'POST',
      json: { metadata: { name: 'python-pool' }, spec: { replicas: 2, sandboxTemplateRef: { name: 'python' } } },
    });
    assert.equal(pool.status, 201, await pool.text());
    const ready = await api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxwarmpools/python-pool/wait?timeoutSeconds=180`);
    assert.equal(ready.status, 200, await ready.text());
  });

  after(async () => {
    await m?.close();
    await m?.cluster.kubectl('delete', 'namespace', LIMITED_NS, '--ignore-not-found', '--wait=false');
  });

  test('/info names the backend, what it cannot do, and the runtime classes the cluster lacks', async () => {
    const info = (await moat.info()) as {
      backend: { kind: string; capabilities: Record<string, boolean> };
      runtimes: Record<string, { available: boolean; reason?: string }>;
    };
    assert.equal(info.backend.kind, 'kubernetes');
    assert.deepEqual(info.backend.capabilities, { pause: false, hibernate: true, layerBackups: false, volumes: false });
    assert.equal(info.runtimes.runc?.available, true);
    assert.equal(info.runtimes.gvisor?.available, false);
    assert.match(info.runtimes.gvisor?.reason ?? '', /RuntimeClass "gvisor"/);
  });

  test('a warm claim through the SDK: exec, files, a PTY and an exposed port', async () => {
    const sbx = await moat.sandboxes.create({ template: 'python' });
    try {
      assert.equal(sbx.resource.status?.phase, 'Running');
      // Taken from the pool: agent-sandbox adopted one of its sandboxes for the claim.
      assert.match(sbx.name, /^python-pool-/);
      const r = await sbx.exec(['sh', '-c', 'echo "hello $WHO"; id -u; exit 3'], { env: { WHO: 'cluster' } });
      assert.deepEqual([r.stdout, r.exitCode], ['hello cluster\n0\n', 3]);
      assert.equal((await sbx.exec(['pwd'], { cwd: '/root' })).stdout, '/root\n');

      const blob = Buffer.alloc(3 << 20, 7);
      await sbx.files.mkdir('/workspace');
      await sbx.files.write('/workspace/blob', blob);
      await sbx.files.write('/workspace/a.txt', 'A');
      assert.equal(Buffer.compare(await sbx.files.read('/workspace/blob'), blob), 0);
      assert.deepEqual(
        (await sbx.files.list('/workspace')).map((e) => e.name),
        ['a.txt', 'blob'],
      );

      const cat = sbx.spawn(['cat']);
      cat.write('through pods/exec');
      cat.end();
      assert.equal((await cat.wait()).stdout, 'through pods/exec');
      const tty = await sbx.spawn(['sh', '-c', 'tty; stty size'], { tty: true, rows: 33, cols: 77 }).wait();
      assert.match(tty.stdout, /\/dev\/pts\/\d+/);
      assert.match(tty.stdout, /33 77/);

      // The tutorial image's server, through Moat's port route (the agent dials the pod's loopback).
      const health = await api(`/apis/agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxes/${sbx.name}/ports/8888/`);
      assert.equal(health.status, 200);
      assert.equal(((await health.json()) as { status: string }).status, 'ok');
    } finally {
      await sbx.delete({ wait: true });
    }
  });

  test('one pods/exec session per pod carries every operation, and the next operation reopens a dropped one', async () => {
    const sbx = await moat.sandboxes.create({ template: 'python' });
    try {
      // The exec's parent is its handler, whose parent is the `moat-init --mux` of the pod's one pods/exec session.
      const channel = async () => {
        const r = await sbx.exec(['sh', '-c', 'm=$(cut -d" " -f4 /proc/$PPID/stat); echo $m; tr "\\0" " " < /proc/$m/cmdline']);
        const [pid, cmdline] = r.stdout.split('\n');
        assert.match(cmdline ?? '', /moat-init-[0-9a-f]+ --mux/);
        return Number(pid);
      };
      const first = await channel();
      await sbx.files.write('/workspace/reuse.txt', 'one session');
      assert.equal((await sbx.files.read('/workspace/reuse.txt')).toString(), 'one session');
      const cat = sbx.spawn(['cat']);
      cat.write('through the channel');
      cat.end();
      assert.equal((await cat.wait()).stdout, 'through the channel');
      for (let i = 0; i < 5; i++) assert.equal(await channel(), first, 'a later operation got its own pods/exec session');

      // The channel dies under Moat (as if the kubelet restarted): its operations fail, and the next one opens another.
      await sbx.exec(['kill', '-9', String(first)]).catch(() => {});
      await new Promise((r) => setTimeout(r, 1000));
      const second = await channel();
      assert.notEqual(second, first);
      assert.equal(await channel(), second);
    } finally {
      await sbx.delete({ wait: true });
    }
  });

  test('hibernate stops the pod and keeps the Sandbox; the next exec wakes it', async () => {
    const sbx = await moat.sandboxes.create({ template: 'python' });
    try {
      await sbx.hibernate();
      const pod =
        (await m.cluster.kubectl('get', 'sandbox', '-n', NS, sbx.name, '-o', 'jsonpath={.metadata.annotations.agents\\.x-k8s\\.io/pod-name}')) || sbx.name;
      await m.cluster.kubectl('wait', '--for=delete', `pod/${pod}`, '-n', NS, '--timeout=60s');
      assert.equal((await sbx.refresh()).resource.status?.phase, 'Hibernated');
      // Moat's API still serves it; the call that needs it wakes it.
      const r = await sbx.exec(['echo', 'awake']);
      assert.equal(r.stdout, 'awake\n');
      assert.equal((await sbx.refresh()).resource.status?.phase, 'Running');
    } finally {
      await sbx.delete({ wait: true });
    }
  });

  test('the moat CLI against cluster mode', async () => {
    const env = { ...(process.env as Record<string, string>), MOAT_URL: m.server.url, MOAT_API_KEY: m.server.adminKey, MOAT_NAMESPACE: NS, HOME: m.dir };
    const created = await runProcess(process.execPath, [CLI, 'sandbox', 'create', '--template', 'python'], { env });
    assert.equal(created.code, 0, created.stderr);
    const name = created.stdout.trim();
    try {
      const r = await runProcess(process.execPath, [CLI, 'exec', name, '--', 'sh', '-c', 'echo from-cli; exit 4'], { env });
      assert.equal(r.stdout, 'from-cli\n');
      assert.equal(r.code, 4);
    } finally {
      const d = await runProcess(process.execPath, [CLI, 'sandbox', 'delete', name], { env });
      assert.equal(d.code, 0, d.stderr);
    }
  });

  test('bad input: a runtime class the cluster lacks, a missing template or image, an unknown namespace', async () => {
    await assert.rejects(
      moat.sandboxes.create({ image: m.cluster.pythonImage, runtime: 'gvisor', wait: false }),
      (e: unknown) => e instanceof MoatError && e.status === 422 && /RuntimeClass "gvisor", which this cluster does not have/.test(e.message),
    );
    await assert.rejects(
      moat.sandboxes.create({ template: 'no-such-template' }),
      (e: unknown) => e instanceof MoatError && e.reason === 'TemplateNotFound' && /no-such-template/.test(e.message),
    );
    const missing = await moat.sandboxes.create({ image: 'moat.local/no/such-image:1', wait: false, name: 'missing-image' });
    try {
      const deadline = Date.now() + 60_000;
      let ready;
      do {
        await new Promise((r) => setTimeout(r, 500));
        ready = (await missing.refresh()).resource.status?.conditions?.find((c) => c.type === 'Ready');
      } while (ready?.reason !== 'ImageNotFound' && Date.now() < deadline);
      assert.equal(ready?.reason, 'ImageNotFound', JSON.stringify(ready));
      assert.match(ready?.message ?? '', /moat\.local\/no\/such-image/);
      await assert.rejects(missing.exec(['true']), (e: unknown) => e instanceof MoatError && e.status === 409);
    } finally {
      await missing.delete({ wait: true });
    }
    // A Moat agent whose namespace the cluster does not have.
    assert.equal((await api('/apis/moat.dev/v1/users/admin/agents', { method: 'POST', json: { name: 'ghost' } })).status, 201);
    const r = await api('/apis/agents.x-k8s.io/v1alpha1/namespaces/admin-ghost/sandboxes', {
      method: 'POST',
      json: { metadata: { name: 'x' }, spec: { podTemplate: { spec: { containers: [{ image: m.cluster.pythonImage }] } } } },
    });
    assert.equal(r.status, 404);
    assert.match(
      ((await r.json()) as { message: string }).message,
      /namespace "admin-ghost" does not exist in the cluster.*kubectl create namespace admin-ghost/,
    );
    // Moat-only fields this backend does not enforce yet are refused, not ignored.
    const egress = await api(`/apis/agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxes`, {
      method: 'POST',
      json: {
        metadata: { name: 'y' },
        spec: { podTemplate: { spec: { containers: [{ image: m.cluster.pythonImage }] } }, egressPolicy: { mode: 'deny-all' } },
      },
    });
    assert.equal(egress.status, 501);
  });

  test('a namespace Moat may not touch: RBAC refuses it and the API says so', async () => {
    // A service account that may only manage agent-sandbox objects in its own namespace, as a tenant's Moat would.
    await m.cluster.kubectl('create', 'namespace', LIMITED_NS);
    await m.cluster.kubectl('create', 'serviceaccount', 'moat', '-n', LIMITED_NS);
    await m.cluster.kubectl(
      'create',
      'role',
      'moat',
      '-n',
      LIMITED_NS,
      '--verb=*',
      '--resource=sandboxes.agents.x-k8s.io,pods,pods/exec,leases.coordination.k8s.io',
    );
    await m.cluster.kubectl('create', 'rolebinding', 'moat', '-n', LIMITED_NS, '--role=moat', `--serviceaccount=${LIMITED_NS}:moat`);
    const token = (await m.cluster.kubectl('create', 'token', 'moat', '-n', LIMITED_NS, '--duration=1h')).trim();
    const server0 = (await m.cluster.kubectl('config', 'view', '--minify', '-o', 'jsonpath={.clusters[0].cluster.server}')).trim();
    const ca = (await m.cluster.kubectl('config', 'view', '--minify', '--raw', '-o', 'jsonpath={.clusters[0].cluster.certificate-authority-data}')).trim();
    const kubeconfig = join(m.dir, 'limited.kubeconfig');
    await writeFile(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'dev', cluster: { server: server0, 'certificate-authority-data': ca } }],
        users: [{ name: 'moat', user: { token } }],
        contexts: [{ name: 'moat', context: { cluster: 'dev', user: 'moat', namespace: LIMITED_NS } }],
        'current-context': 'moat',
      }),
    );
    const limited = await clusterServer(join(m.dir, 'limited'), kubeconfig);
    try {
      const res = await fetch(`${limited.url}/apis/agents.x-k8s.io/v1alpha1/namespaces/${NS}/sandboxes`, {
        headers: { authorization: `Bearer ${limited.adminKey}` },
      });
      assert.equal(res.status, 403);
      const body = (await res.json()) as { message: string };
      assert.match(body.message, /Kubernetes refused Moat access/);
      assert.match(body.message, new RegExp(`cannot list resource "sandboxes".* in the namespace "${NS}"`));
      const own = await fetch(`${limited.url}/apis/agents.x-k8s.io/v1alpha1/namespaces/${LIMITED_NS}/sandboxes`, {
        headers: { authorization: `Bearer ${limited.adminKey}` },
      });
      assert.equal(own.status, 200);
    } finally {
      await limited.close();
    }
  });

  test('deploy/kubernetes is valid for the cluster (kustomize, server-side dry run)', async () => {
    const ns = await m.cluster.kubectl('get', 'namespace', 'moat', '--ignore-not-found', '-o', 'name');
    if (!ns.trim()) await m.cluster.kubectl('create', 'namespace', 'moat');
    try {
      const out = await m.cluster.kubectl('apply', '-k', join(import.meta.dirname, '../../deploy/kubernetes'), '--dry-run=server');
      for (const kind of [
        'serviceaccount/moat',
        'clusterrole.rbac.authorization.k8s.io/moat',
        'role.rbac.authorization.k8s.io/moat-leader',
        'configmap/moat',
        'deployment.apps/moat',
        'service/moat',
      ]) {
        assert.match(out, new RegExp(`${kind.replace(/\./g, '\\.')} (created|configured|unchanged) \\(server dry run\\)`), out);
      }
    } finally {
      if (!ns.trim()) await m.cluster.kubectl('delete', 'namespace', 'moat', '--wait=false');
    }
  });
});
