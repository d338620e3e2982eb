// Cluster mode on the dev cluster: claim → first exec result through Moat (SDK), warm and cold, against
// agent-sandbox alone in the same run (a v1beta1 claim with warmPoolRef, Ready, then pods/exec of `true`).
import { Moat, type Sandbox } from '@moat/sdk';
import { Kube } from '../packages/server/src/backends/kubernetes/kube.js';
import { until, conditionIs } from '../packages/server/src/backends/kubernetes/objects.js';
import { execOnce } from '../packages/server/src/backends/kubernetes/pod-exec.js';
import { collectionPath, objectPath, podName, type KubeObject } from '../packages/server/src/backends/kubernetes/translate.js';
import { startClusterMoat, type ClusterMoat } from '../test/helpers/cluster-moat.js';
import { row, time } from './stats.js';

const N = Number(process.env.BENCH_CLUSTER_N ?? 20);
const N_COLD = Number(process.env.BENCH_COLD ?? 5);
const POOL = 'bench-pool';
/** The Moat agent whose namespace (admin-<agent>) the run uses: another name keeps runs side by side apart. */
const AGENT = process.env.BENCH_CLUSTER_AGENT ?? 'bench';

/** Waits until the pool has all its members Ready again, so the next claim is served warm. */
async function poolFull(kube: Kube, namespace: string, replicas: number) {
  await until(kube, 'SandboxWarmPool', namespace, POOL, 180_000, (o) => (((o.status?.readyReplicas as number) ?? 0) >= replicas ? true : undefined));
}

/** agent-sandbox alone: the claim, its Ready, then an exec of `true` in the pod through the Kubernetes API. */
async function kubeClaimThenExec(kube: Kube, namespace: string, name: string) {
  await kube.call('POST', collectionPath('SandboxClaim', namespace, 'v1beta1'), name, {
    apiVersion: 'extensions.agents.x-k8s.io/v1beta1',
    kind: 'SandboxClaim',
    metadata: { name, namespace },
    spec: { warmPoolRef: { name: POOL } },
  });
  const sandbox = await until(kube, 'SandboxClaim', namespace, name, 60_000, (o) =>
    conditionIs(o, 'Ready') ? (o.status?.sandbox as { name: string }).name : undefined,
  );
  const obj = await kube.get<KubeObject>(objectPath('Sandbox', namespace, sandbox), sandbox);
  const r = await execOnce(kube, { namespace, pod: podName(obj), container: 'python-runtime' }, ['true']);
  if (r.exitCode !== 0) throw new Error(`exec in ${sandbox}: exit ${r.exitCode} ${r.stderr}`);
}

async function deleteClaim(m: ClusterMoat, name: string) {
  await m.api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${m.namespace}/sandboxclaims/${name}?wait=true`, { method: 'DELETE' });
}

export async function benchCluster() {
  console.log('\n== cluster mode on the dev cluster (claim → first exec result) ==');
  const m = await startClusterMoat(AGENT);
  const kube = await Kube.connect(m.cluster.kubeconfig);
  try {
    const replicas = 3;
    await m.pythonTemplate('python');
    const pool = await m.api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${m.namespace}/sandboxwarmpools`, {
      method: 'POST',
      json: { metadata: { name: POOL }, spec: { replicas, sandboxTemplateRef: { name: 'python' } } },
    });
    if (pool.status !== 201) throw new Error(`pool: ${await pool.text()}`);
    const moat = new Moat({ url: m.server.url, apiKey: m.server.adminKey, namespace: m.namespace });

    // Alternating, so both see the same cluster load; the pool is full before every claim.
    const baseline: number[] = [];
    const warm: number[] = [];
    for (let i = 0; i < N; i++) {
      await poolFull(kube, m.namespace, replicas);
      baseline.push(await time(() => kubeClaimThenExec(kube, m.namespace, `base-${i}`)));
      await deleteClaim(m, `base-${i}`);
      await poolFull(kube, m.namespace, replicas);
      let sbx: Sandbox | undefined;
      warm.push(
        await time(async () => {
          sbx = await moat.sandboxes.create({ template: 'python' });
          const r = await sbx.exec(['true']);
          if (r.exitCode !== 0) throw new Error(`exec: ${JSON.stringify(r)}`);
        }),
      );
      await sbx?.delete({ wait: true });
    }
    const cold: number[] = [];
    for (let i = 0; i < N_COLD; i++) {
      const name = `cold-${i}`;
      cold.push(
        await time(async () => {
          await moat.claims.create({ metadata: { name }, spec: { sandboxTemplateRef: { name: 'python' }, warmpool: 'none' } });
          const claim = (await moat.claims.wait(name, { timeoutSeconds: 120 })) as { status?: { sandbox?: { name?: string } } };
          const r = await (await moat.sandboxes.get(claim.status!.sandbox!.name!)).exec(['true']);
          if (r.exitCode !== 0) throw new Error(`exec: ${JSON.stringify(r)}`);
        }),
      );
      await deleteClaim(m, name);
    }
    console.log('  baseline (same run): agent-sandbox alone, v1beta1 claim → Ready → pods/exec of true');
    row('agent-sandbox warm claim → first exec', baseline);
    console.log('  moat (SDK: sandboxes.create({template}) → exec true):');
    row('moat warm claim → first exec', warm, baseline);
    row('moat cold claim → first exec', cold, baseline);
    console.log('  targets: moat warm p50 ≤ 150 ms, p99 ≤ 400 ms, and no slower than agent-sandbox alone');
  } finally {
    kube.close();
    await m.close();
  }
}
