// Faults under a running sandbox on the dev cluster: the kubelet, containerd and the apiserver are killed and
// started again (scripts/dev-cluster kill|start). What the user sees while each is away (a clear error, nothing
// half-made), what the sandbox's status says, and what survives: the same container, with its files.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat } from '@moat/sdk';
import { startClusterMoat, type ClusterMoat } from '../helpers/cluster-moat.js';
import { until } from '../helpers/extensions.js';
import { runProcess } from '../helpers/run-process.js';

const DEV_CLUSTER = join(import.meta.dirname, '../../scripts/dev-cluster');

async function daemon(action: 'kill' | 'start', name: string): Promise<void> {
  const r = await runProcess(DEV_CLUSTER, [action, name], { env: process.env as Record<string, string> });
  assert.equal(r.code, 0, `dev-cluster ${action} ${name}: ${r.stderr}${r.stdout}`);
}

interface ExecAnswer {
  status: number;
  /** The Status message of a refused exec. */
  message: string;
  stdout: string;
  exitCode?: number;
}

describe('faults under a running sandbox on the cluster', { concurrency: false }, () => {
  let m: ClusterMoat;
  let moat: Moat;
  let name: string;
  const sandboxPath = () => `/apis/agents.x-k8s.io/v1alpha1/namespaces/${m.namespace}/sandboxes/${name}`;

  /** An exec through Moat's REST API as curl would see it: the HTTP status, then the NDJSON stream. */
  async function exec(command: string[]): Promise<ExecAnswer> {
    const r = await m.api(`${sandboxPath()}/exec`, { method: 'POST', json: { command } });
    if (r.status !== 200) return { status: r.status, message: ((await r.json()) as { message: string }).message, stdout: '' };
    let stdout = '';
    let exitCode: number | undefined;
    let message = '';
    for (const line of (await r.text()).split('\n').filter(Boolean)) {
      const ev = JSON.parse(line) as { type: string; data?: string; exitCode?: number; message?: string };
      if (ev.type === 'stdout') stdout += Buffer.from(ev.data!, 'base64').toString();
      else if (ev.type === 'exit') exitCode = ev.exitCode;
      else if (ev.type === 'error') message = ev.message ?? '';
    }
    return { status: 200, message, stdout, exitCode };
  }

  /** What only the same container has: its PID 1's start time and a file in its writable layer. */
  const identity = async () => {
    const r = await exec(['sh', '-c', 'cut -d" " -f22 /proc/1/stat; cat /root/marker']);
    assert.equal(r.exitCode, 0, r.message || r.stdout);
    return r.stdout;
  };

  /** Waits until exec works again (the kubelet re-registers, containerd's CRI comes back). */
  const execWorks = (timeoutMs: number) =>
    until(
      'exec works again',
      async () => {
        const r = await exec(['true']);
        if (r.exitCode !== 0) throw new Error(`${r.status} ${r.message}`);
        return true;
      },
      timeoutMs,
    );

  const readyCondition = async () => {
    const r = await m.api(sandboxPath());
    assert.equal(r.status, 200);
    const s = (await r.json()) as { status: { phase: string; conditions: { type: string; status: string; reason: string; message: string }[] } };
    return { phase: s.status.phase, ready: s.status.conditions.find((c) => c.type === 'Ready') };
  };

  before(async () => {
    m = await startClusterMoat('faults');
    moat = new Moat({ url: m.server.url, apiKey: m.server.adminKey, namespace: m.namespace });
    await m.pythonTemplate('python');
    name = (await moat.sandboxes.create({ template: 'python' })).name;
    const r = await exec(['sh', '-c', 'echo written-before > /root/marker']);
    assert.equal(r.exitCode, 0, r.message);
  });

  after(async () => {
    // A failed case must not leave the cluster without one of its daemons for the tests after this file.
    for (const d of ['kube-apiserver', 'containerd', 'kubelet']) await daemon('start', d); // a running one is left alone
    await m?.close();
  });

  // Briefly away: Kubernetes has not noticed (the sandbox stays Running), and the container lives on (under its shim).
  for (const [away, says] of [
    ['kubelet', /kubelet cannot be reached/],
    ['containerd', /container runtime cannot be reached/],
  ] as const) {
    test(`${away} dies: exec answers 502 saying what is away; once it is back, the same container serves it`, async () => {
      const before = await identity();
      await daemon('kill', away);
      try {
        // A call may still ride the agent channel that died with it ("connection lost"); the next opens one and hears why.
        let r = await exec(['true']);
        assert.equal(r.status, 502, r.message);
        if (!says.test(r.message)) r = await exec(['true']);
        assert.equal(r.status, 502, r.message);
        assert.match(r.message, says);
        assert.equal((await readyCondition()).phase, 'Running');
      } finally {
        await daemon('start', away);
      }
      await execWorks(60_000);
      assert.equal(await identity(), before);
    });
  }

  test('the apiserver goes away: every call answers 503 saying so, a create leaves nothing behind; then all works', async () => {
    await daemon('kill', 'kube-apiserver');
    try {
      const got = await m.api(sandboxPath());
      assert.equal(got.status, 503);
      assert.match(((await got.json()) as { message: string }).message, /Kubernetes API server at \S+ cannot be reached/);
      const r = await exec(['true']);
      assert.equal(r.status, 503, r.message);
      const created = await m.api(`/apis/agents.x-k8s.io/v1alpha1/namespaces/${m.namespace}/sandboxes`, {
        method: 'POST',
        json: { metadata: { name: 'while-down' }, spec: { podTemplate: { spec: { containers: [{ image: m.cluster.pythonImage }] } } } },
      });
      assert.equal(created.status, 503);
      assert.match(((await created.json()) as { message: string }).message, /sandbox \S+\/while-down is unchanged/);
      const claim = await m.api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${m.namespace}/sandboxclaims`, {
        method: 'POST',
        json: { metadata: { name: 'claim-while-down' }, spec: { sandboxTemplateRef: { name: 'python' } } },
      });
      assert.equal(claim.status, 503);
    } finally {
      await daemon('start', 'kube-apiserver');
    }
    await execWorks(60_000);
    const sandboxes = await m.cluster.kubectl('get', 'sandboxes,sandboxclaims', '-n', m.namespace, '-o', 'name');
    assert.doesNotMatch(sandboxes, /while-down/);
    // It leads afterwards (an outage past its renew deadline makes it step down; then it takes the Lease again).
    await until(
      'Moat leads again',
      async () => {
        const info = (await (await m.api('/apis/moat.dev/v1/info')).json()) as { backend: { leads: boolean } };
        return info.backend.leads ? true : undefined;
      },
      30_000,
    );
  });

  test('a long kubelet outage: the node goes NotReady, the sandbox says why, exec says why; it recovers', async () => {
    const before = await identity();
    await daemon('kill', 'kubelet');
    try {
      // The node controller notices after its grace period (50 s by default) and marks the pod not Ready.
      const down = await until(
        'the sandbox reports its node',
        async () => {
          const c = await readyCondition();
          return c.ready?.status === 'False' ? c : undefined;
        },
        120_000,
      );
      assert.equal(down.phase, 'Pending');
      assert.equal(down.ready?.reason, 'NodeNotReady');
      assert.match(down.ready?.message ?? '', /node \S+ is not ready/);
      const r = await exec(['true']);
      assert.ok(r.status === 409 || r.status === 502, `${r.status} ${r.message}`);
      assert.match(r.message, /node \S+ is not ready|kubelet cannot be reached/);
    } finally {
      await daemon('start', 'kubelet');
    }
    await execWorks(120_000);
    assert.equal(await identity(), before);
    await until('the sandbox is Running again', async () => ((await readyCondition()).phase === 'Running' ? true : undefined), 60_000);
  });
});
