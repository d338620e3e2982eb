import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { devClusterUp, type DevCluster } from '../helpers/dev-cluster.js';

let kubectl: DevCluster['kubectl'];
let portForward: DevCluster['portForward'];

// The GKE Sandbox tutorial's python-runtime SandboxTemplate (with its readiness probe) and a SandboxClaim, as
// agent-sandbox v0.5 takes them: in v1beta1 a claim names a SandboxWarmPool of the template (v1alpha1's
// sandboxTemplateRef is converted to a `shadow-pool-<template>` pool that only the upgrade script creates). The
// image is the one the dev cluster imported, so nothing is pulled.
const tutorial = (image: string) => `apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxTemplate
metadata:
  name: python-runtime-template
  namespace: default
spec:
  podTemplate:
    metadata:
      labels:
        sandbox: python-sandbox-example
    spec:
      containers:
      - name: python-runtime
        image: ${image}
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 8888
        readinessProbe:
          httpGet:
            path: "/"
            port: 8888
          initialDelaySeconds: 0
          periodSeconds: 1
        resources:
          requests:
            cpu: "250m"
            memory: "512Mi"
            ephemeral-storage: "512Mi"
      restartPolicy: "OnFailure"
---
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxWarmPool
metadata:
  name: python-runtime-pool
  namespace: default
spec:
  replicas: 1
  sandboxTemplateRef:
    name: python-runtime-template
---
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxClaim
metadata:
  name: python-sandbox-claim
  namespace: default
spec:
  warmPoolRef:
    name: python-runtime-pool
`;

describe('dev cluster (scripts/dev-cluster)', () => {
  let dir: string;
  let manifest: string;
  before(async () => {
    const cluster = await devClusterUp();
    ({ kubectl, portForward } = cluster);
    dir = await mkdtemp(join(tmpdir(), 'moat-dev-cluster-'));
    manifest = join(dir, 'python-sandbox.yaml');
    await writeFile(manifest, tutorial(cluster.pythonImage));
    await kubectl('delete', '-f', manifest, '--ignore-not-found', '--wait'); // what an interrupted run left
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('the node is Ready, seen from the host', async () => {
    const ready = await kubectl('get', 'nodes', '-o', 'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}');
    assert.equal(ready, 'True');
  });

  test("agent-sandbox's CRDs serve v1beta1 (stored) and v1alpha1", async () => {
    for (const crd of [
      'sandboxes.agents.x-k8s.io',
      'sandboxclaims.extensions.agents.x-k8s.io',
      'sandboxtemplates.extensions.agents.x-k8s.io',
      'sandboxwarmpools.extensions.agents.x-k8s.io',
    ]) {
      const versions = await kubectl('get', 'crd', crd, '-o', 'jsonpath={range .spec.versions[*]}{.name}:{.served}:{.storage} {end}');
      assert.deepEqual(versions.trim().split(' ').sort(), ['v1alpha1:true:false', 'v1beta1:true:true'], crd);
    }
  });

  test('the GKE tutorial: template, warm pool, claim, wait Ready, port-forward, health and execute, delete leaves nothing', async () => {
    await kubectl('apply', '-f', manifest);
    await kubectl('wait', '--for=condition=Ready', 'sandboxclaim/python-sandbox-claim', '--timeout=180s');
    const sandbox = await kubectl('get', 'sandboxclaim', 'python-sandbox-claim', '-o', 'jsonpath={.status.sandbox.name}');
    await kubectl('wait', '--for=condition=Ready', `sandbox/${sandbox}`, '--timeout=60s');
    // The same claim read as v1alpha1, through agent-sandbox's conversion webhook.
    const alpha = await kubectl('get', 'sandboxclaims.v1alpha1.extensions.agents.x-k8s.io', 'python-sandbox-claim', '-o', 'jsonpath={.spec.warmpool}');
    assert.equal(alpha, 'python-runtime-pool');
    const selector = await kubectl('get', 'sandbox', sandbox, '-o', 'jsonpath={.status.selector}');
    const pod = (await kubectl('get', 'pods', '-l', selector, '-o', 'jsonpath={.items[*].metadata.name}')).trim();
    assert.match(pod, /^\S+$/, `one pod for selector ${selector}`);

    const { url, child } = await portForward(`pod/${pod}`, 8888);
    try {
      const health = await fetch(`${url}/`);
      assert.equal(health.status, 200);
      assert.equal(((await health.json()) as { status: string }).status, 'ok');
      const exec = await fetch(`${url}/execute`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ command: "echo 'hello world'" }),
      });
      assert.equal(exec.status, 200);
      assert.deepEqual(await exec.json(), { stdout: 'hello world\n', stderr: '', exit_code: 0 });
    } finally {
      child.kill();
    }

    await kubectl('delete', '-f', manifest, '--wait');
    // The controllers delete what they made (the pool's sandboxes, the pods) after the objects above are gone.
    await kubectl('wait', '--for=delete', 'sandboxes,pods', '--all', '-n', 'default', '--timeout=90s');
    assert.equal(await kubectl('get', 'sandboxes,sandboxclaims,sandboxwarmpools,sandboxtemplates,pods', '-n', 'default', '-o', 'name'), '');
  });
});
