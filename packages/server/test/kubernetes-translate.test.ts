// The Kubernetes backend's pure parts: agent-sandbox's objects as Moat answers them, and the runtime class map.
// (test/cluster runs the backend against a real cluster.)
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_RUNTIME_CLASSES, parseRuntimeClassMap } from '../src/backends/kubernetes/runtimes.js';
import { phaseOf, refuseHostOnly, toKube, toSandbox, type KubeObject } from '../src/backends/kubernetes/translate.js';

const sandbox = (spec: Record<string, unknown>, conditions: object[] = [], extra: Partial<KubeObject['metadata']> = {}): KubeObject => ({
  metadata: { name: 's', namespace: 'default', uid: 'u1', creationTimestamp: '2026-01-01T00:00:00Z', resourceVersion: '7', ...extra },
  spec: { podTemplate: { spec: { containers: [{ name: 'c', image: 'i' }] } }, ...spec },
  status: { conditions, podIPs: ['10.0.0.9'] },
});

test("a phase from agent-sandbox's conditions: a suspended sandbox is Hibernated even though its pod finished", () => {
  assert.equal(phaseOf(sandbox({}, [{ type: 'Ready', status: 'True' }])), 'Running');
  assert.equal(phaseOf(sandbox({}, [{ type: 'Ready', status: 'False' }])), 'Pending');
  assert.equal(phaseOf(sandbox({ replicas: 0 }, [{ type: 'Finished', status: 'True', reason: 'PodSucceeded' }])), 'Hibernated');
  assert.equal(phaseOf(sandbox({}, [{ type: 'Finished', status: 'True', reason: 'PodFailed' }])), 'Failed');
  assert.equal(phaseOf(sandbox({}, [{ type: 'Ready', status: 'True' }], { deletionTimestamp: '2026-01-01T00:01:00Z' })), 'Terminating');
});

test("a claimed sandbox carries Moat's claim label; the pod's IP is its address; a hibernated one says so", () => {
  const s = toSandbox(sandbox({ replicas: 0 }, [], { ownerReferences: [{ kind: 'SandboxClaim', name: 'my-claim', uid: 'c1' }] }), 'runc');
  assert.equal(s.metadata.labels?.['agents.x-k8s.io/claim'], 'my-claim');
  assert.equal(s.status.network?.address, '10.0.0.9');
  assert.equal(s.status.runtimeClassName, 'runc');
  assert.ok(s.status.conditions.some((c) => c.type === 'Hibernated' && c.status === 'True'));
});

test('bodies for Kubernetes drop the echoed read-only fields and refuse another namespace', () => {
  const body = toKube('Sandbox', 'ns', { metadata: { name: 'a', uid: 'x', resourceVersion: '3', labels: { k: 'v' } }, spec: {} });
  assert.deepEqual(body.metadata, { namespace: 'ns', name: 'a', labels: { k: 'v' } });
  assert.throws(() => toKube('Sandbox', 'ns', { metadata: { name: 'a', namespace: 'other' }, spec: {} }), /does not match the namespace in the path/);
});

test('Moat fields this backend cannot enforce are refused with 501, never ignored', () => {
  assert.throws(
    () => refuseHostOnly({ egressPolicy: { mode: 'deny-all' } }, 'spec'),
    (e: unknown) => (e as { code: number }).code === 501,
  );
  refuseHostOnly({ podTemplate: {} }, 'spec');
});

test('MOAT_K8S_RUNTIME_CLASSES maps over the defaults; bad terms are errors that show the syntax', () => {
  assert.deepEqual(parseRuntimeClassMap(undefined), DEFAULT_RUNTIME_CLASSES);
  assert.deepEqual(parseRuntimeClassMap('microvm=kata-fc, gvisor=runsc'), { runc: null, gvisor: 'runsc', microvm: 'kata-fc' });
  assert.deepEqual(parseRuntimeClassMap('gvisor='), { ...DEFAULT_RUNTIME_CLASSES, gvisor: null });
  assert.throws(() => parseRuntimeClassMap('firecracker=fc'), /use runc\|gvisor\|microvm=<RuntimeClass name>/);
  assert.throws(() => parseRuntimeClassMap('gvisor'), /runtime class mapping "gvisor"/);
});
