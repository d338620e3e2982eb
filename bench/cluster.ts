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

/**
 * When each claim appeared and when its status first named its sandbox, from one watch of the namespace's claims
 * in v1beta1 (the controller's own version, so no conversion webhook in between): the controller's share of a
 * claim, the same whoever made the claim.
 */
class ClaimTimes {
  private readonly added = new Map<string, number>();
  private readonly bound = new Map<string, { claim: string; at: number }>(); // by sandbox
  private readonly stop: () => void;

  constructor(kube: Kube, namespace: string) {
    this.stop = kube.watch(
      collectionPath('SandboxClaim', namespace, 'v1beta1'),
      {},
      (type, obj) => {
        const o = obj as KubeObject;
        const at = performance.now();
        if (type === 'ADDED') this.added.set(o.metadata.name, at);
        const sandbox = (o.status?.sandbox as { name?: string } | undefined)?.name;
        if (sandbox && !this.bound.has(sandbox)) this.bound.set(sandbox, { claim: o.metadata.name, at });
      },
      () => {},
    );
  }

  /** Claim created → its status names `sandbox`, in ms. */
  controller(sandbox: string): number {
    const b = this.bound.get(sandbox);
    const a = b && this.added.get(b.claim);
    if (!b || a === undefined) throw new Error(`the claims watch saw no claim binding sandbox ${sandbox}`);
    return b.at - a;
  }

  close() {
    this.stop();
  }
}

/** One warm claim → first exec, split: the claim until the client holds its sandbox (of it, the controller's part), then the exec. */
interface Split {
  total: number[];
  claim: number[];
  controller: number[];
  exec: number[];
}
const split = (): Split => ({ total: [], claim: [], controller: [], exec: [] });

async function measure(out: Split, times: ClaimTimes, claim: () => Promise<string>, exec: () => Promise<void>) {
  const t0 = performance.now();
  const sandbox = await claim();
  const t1 = performance.now();
  await exec();
  const t2 = performance.now();
  out.total.push(t2 - t0);
  out.claim.push(t1 - t0);
  out.controller.push(times.controller(sandbox));
  out.exec.push(t2 - t1);
}

function report(s: Split, base?: Split) {
  row('claim → first exec', s.total, base?.total);
  row('  claim → sandbox in hand', s.claim, base?.claim);
  row('    of it: created → bound (the controller)', s.controller, base?.controller);
  const client = (x: Split) => x.claim.map((c, i) => c - x.controller[i]!);
  row('    of it: the rest (client, API, watch)', client(s), base && client(base));
  row('  sandbox in hand → first exec result', s.exec, base?.exec);
}

/** agent-sandbox alone: the claim, its Ready, its Sandbox read; the sandbox's name. */
async function kubeClaim(kube: Kube, namespace: string, name: string): Promise<KubeObject> {
  await kube.call('POST', collectionPath('SandboxClaim', namespace, 'v1beta1'), name, {
    apiVersion: 'extensions.agents.x-k8s.io/v1beta1',
    kind: 'SandboxClaim',
    metadata: { name, namespace },
    spec: { warmPoolRef: { name: POOL } },
  });
  const sandbox = await until(kube, 'SandboxClaim', namespace, name, 60_000, (o) =>
    conditionIs(o, 'Ready') ? (o.status?.sandbox as { name: string }).name : undefined,
  );
  return kube.get<KubeObject>(objectPath('Sandbox', namespace, sandbox), sandbox);
}

/** agent-sandbox alone: an exec of `true` in the sandbox's pod through the Kubernetes API. */
async function kubeExec(kube: Kube, sandbox: KubeObject) {
  const r = await execOnce(kube, { namespace: sandbox.metadata.namespace, pod: podName(sandbox), container: 'python-runtime' }, ['true']);
  if (r.exitCode !== 0) throw new Error(`exec in ${sandbox.metadata.name}: exit ${r.exitCode} ${r.stderr}`);
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
    const times = new ClaimTimes(kube, m.namespace);
    const baseline = split();
    const warm = split();
    try {
      for (let i = 0; i < N; i++) {
        await poolFull(kube, m.namespace, replicas);
        let obj: KubeObject | undefined;
        await measure(
          baseline,
          times,
          async () => (obj = await kubeClaim(kube, m.namespace, `base-${i}`)).metadata.name,
          () => kubeExec(kube, obj!),
        );
        await deleteClaim(m, `base-${i}`);
        await poolFull(kube, m.namespace, replicas);
        let sbx: Sandbox | undefined;
        await measure(
          warm,
          times,
          async () => (sbx = await moat.sandboxes.create({ template: 'python' })).name,
          async () => {
            const r = await sbx!.exec(['true']);
            if (r.exitCode !== 0) throw new Error(`exec: ${JSON.stringify(r)}`);
          },
        );
        await sbx?.delete({ wait: true });
      }
    } finally {
      times.close();
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
    console.log('  baseline (same run): agent-sandbox alone, v1beta1 claim → Ready → Sandbox GET → pods/exec of true');
    report(baseline);
    console.log('  moat, warm (SDK: sandboxes.create({template}) → exec true), each row against the same row of the baseline:');
    report(warm, baseline);
    row('moat cold claim → first exec', cold, baseline.total);
    console.log('  targets: moat warm p50 ≤ 150 ms, p99 ≤ 400 ms, and no slower than agent-sandbox alone');
  } finally {
    kube.close();
    await m.close();
  }
}
