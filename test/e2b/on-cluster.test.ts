// The published `e2b` SDK against Moat in cluster mode (test/cluster has the rest of cluster mode): E2B's
// control plane becomes a SandboxClaim, its envd calls reach the pod through Moat's agent over pods/exec.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Sandbox } from 'e2b';
import { startClusterMoat, type ClusterMoat } from '../helpers/cluster-moat.js';

let m: ClusterMoat;
before(async () => {
  m = await startClusterMoat('e2b');
  // No warm pool: a cold start, served through the pool agent-sandbox v0.5 needs for a claim by template.
  await m.pythonTemplate('python');
  // The settings docs/e2b.md gives: one URL for the API and every sandbox; the key's agent owns the namespace.
  Object.assign(process.env, { E2B_API_KEY: m.agentKey, E2B_API_URL: m.server.url, E2B_SANDBOX_URL: m.server.url });
});
after(() => m?.close());

test('the stock e2b SDK on a cluster: create from a template, commands, files, kill', async () => {
  const sbx = await Sandbox.create('python', { timeoutMs: 120_000 });
  try {
    // The tutorial image has no `user` account, E2B's default user: commands run as root here.
    const r = await sbx.commands.run('echo "e2b on $(uname -s)"', { user: 'root' });
    assert.equal(r.stdout, 'e2b on Linux\n');
    await sbx.files.write('/root/e2b.txt', 'written by e2b', { user: 'root' });
    assert.equal(await sbx.files.read('/root/e2b.txt', { user: 'root' }), 'written by e2b');
    assert.equal(await sbx.isRunning(), true);
    const listed = await Sandbox.list().nextItems();
    assert.ok(listed.some((s) => s.sandboxId === sbx.sandboxId));
  } finally {
    await sbx.kill();
  }
  assert.equal(await sbx.isRunning(), false);
});

test('E2B pause is refused on a cluster with the reason, up front for lifecycle.onTimeout "pause"', async () => {
  const claims = async () => (await m.cluster.kubectl('get', 'sandboxclaims', '-n', m.namespace, '-o', 'name')).split('\n').filter(Boolean);
  const before = await claims();
  await assert.rejects(Sandbox.create('python', { timeoutMs: 120_000, lifecycle: { onTimeout: 'pause' } }), /cannot freeze a pod/);
  // (The claim of the test before may still be going.)
  assert.deepEqual(
    (await claims()).filter((c) => !before.includes(c)),
    [],
    'the refused create made no claim',
  );
  const sbx = await Sandbox.create('python', { timeoutMs: 120_000 });
  try {
    await assert.rejects(sbx.pause(), /cannot freeze a pod/);
    assert.equal(await sbx.isRunning(), true);
    assert.equal((await sbx.commands.run('echo still here', { user: 'root' })).stdout, 'still here\n');
  } finally {
    await sbx.kill();
  }
});
