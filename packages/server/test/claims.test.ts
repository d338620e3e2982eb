// Claims and warm pools over the real sandbox, template, pool and claim controllers, the fake driver and an
// in-memory store: why a claim is (not) served from a pool, a pool's surplus order and its back-off.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LABELS, REASON, type SandboxClaim } from '@moat/core';
import { ClaimController } from '../src/backends/local/controllers/claims.js';
import { isReady } from '../src/backends/local/controllers/conditions.js';
import { WarmPoolController } from '../src/backends/local/controllers/pools.js';
import { TemplateController } from '../src/backends/local/controllers/templates.js';
import { requireCapability } from '../src/backends/types.js';
import { controllerFixture, eventually, silent } from './fixtures.js';

async function claimsFixture() {
  const f = await controllerFixture();
  const templates = new TemplateController(f.store, (spec) => f.sandboxes.validateSpec(spec));
  const pools = new WarmPoolController(f.store, f.sandboxes, templates, silent);
  const claims = new ClaimController(f.store, f.sandboxes, templates, pools, silent);
  const pool = async (name: string, replicas: number) => {
    await pools.create('default', { metadata: { name }, spec: { replicas, sandboxTemplateRef: { name: 'base' } } });
    await eventually(`pool ${name} full`, async () => (await pools.get('default', name)).status.readyReplicas === replicas);
  };
  const claim = (name: string, spec: Record<string, unknown>) => claims.create('default', { metadata: { name }, spec });
  const reason = (c: SandboxClaim, type: string) => c.status.conditions.find((x) => x.type === type)?.reason;
  return {
    ...f,
    templates,
    pools,
    claims,
    pool,
    claim,
    reason,
    async close() {
      pools.stop();
      claims.stop();
      await f.close();
    },
  };
}

describe('claims', () => {
  test('a claim is served from a ready pool member, the pool refills, and the member never returns to it', async () => {
    const f = await claimsFixture();
    try {
      await f.pool('p', 2);
      const members = new Set((await f.sandboxes.list('default', `${LABELS.pool}=p`)).map((s) => s.metadata.uid));
      const c = await f.claim('c1', { sandboxTemplateRef: { name: 'base' } });
      assert.equal(f.reason(c, 'WarmPool'), REASON.FromWarmPool);
      const { sandbox } = await f.sandboxes.get('default', 'c1');
      assert.ok(members.has(sandbox.metadata.uid), 'the claim got a member');
      assert.equal(sandbox.metadata.labels?.[LABELS.pool], undefined);
      assert.equal(f.driver.sandboxes.get(sandbox.metadata.uid)?.hostname, 'c1', 'with the claim’s name as its hostname');
      await eventually('the refill', async () => (await f.pools.get('default', 'p')).status.readyReplicas === 2);
      assert.ok(!(await f.sandboxes.list('default', `${LABELS.pool}=p`)).some((s) => s.metadata.uid === sandbox.metadata.uid));
    } finally {
      await f.close();
    }
  });

  test('why a claim starts cold, or is not served', async () => {
    const f = await claimsFixture();
    try {
      assert.equal(f.reason(await f.claim('none', { sandboxTemplateRef: { name: 'base' } }), 'WarmPool'), REASON.NoWarmPool);
      assert.equal(f.reason(await f.claim('fresh', { sandboxTemplateRef: { name: 'base' }, warmpool: 'none' }), 'WarmPool'), REASON.WarmPoolDisabled);
      await f.pool('small', 1);
      await f.claim('first', { warmPoolRef: { name: 'small' } });
      assert.equal(f.reason(await f.claim('second', { warmPoolRef: { name: 'small' } }), 'WarmPool'), REASON.PoolExhausted);
      assert.equal(f.reason(await f.claim('lost', { sandboxTemplateRef: { name: 'nope' } }), 'Ready'), REASON.TemplateNotFound);
      assert.equal(f.reason(await f.claim('nopool', { warmPoolRef: { name: 'nope' } }), 'Ready'), REASON.WarmPoolNotFound);
      assert.equal(
        f.reason(await f.claim('env', { sandboxTemplateRef: { name: 'base' }, env: [{ name: 'A', value: '1' }] }), 'Ready'),
        REASON.InvalidClaim,
        'base does not allow env',
      );
    } finally {
      await f.close();
    }
  });

  test('a claim whose shutdownTime passes is expired by its requeue, not by a poll', async () => {
    const f = await claimsFixture();
    try {
      await f.claim('short', {
        sandboxTemplateRef: { name: 'base' },
        lifecycle: { shutdownTime: new Date(Date.now() + 300).toISOString(), shutdownPolicy: 'Retain' },
      });
      await eventually('the expiry', async () => f.reason(await f.claims.get('default', 'short'), 'Ready') === REASON.ClaimExpired, 3000);
      await assert.rejects(f.sandboxes.get('default', 'short'), /not found/);
    } finally {
      await f.close();
    }
  });
});

describe('warm pools', () => {
  test('a surplus goes not-ready members first, then the newest', async () => {
    const f = await claimsFixture();
    try {
      await f.pool('p', 3);
      const before = (await f.sandboxes.list('default', `${LABELS.pool}=p`)).sort(
        (a, b) => a.metadata.creationTimestamp.localeCompare(b.metadata.creationTimestamp) || a.metadata.name.localeCompare(b.metadata.name),
      );
      await f.pools.replace('default', 'p', { metadata: {}, spec: { replicas: 1, sandboxTemplateRef: { name: 'base' } } });
      await eventually('the scale-down', async () => (await f.sandboxes.list('default', `${LABELS.pool}=p`)).length === 1);
      const kept = (await f.sandboxes.list('default', `${LABELS.pool}=p`))[0]!;
      assert.ok(isReady(kept.status));
      assert.equal(kept.metadata.uid, before[0]!.metadata.uid, 'the oldest ready member stays');
    } finally {
      await f.close();
    }
  });

  test('members that fail to start put the pool in back-off, and it fills once starts work again', async () => {
    const f = await claimsFixture();
    try {
      f.driver.fail('create', 'no space left on device');
      await f.pools.create('default', { metadata: { name: 'p' }, spec: { replicas: 1, sandboxTemplateRef: { name: 'base' } } });
      await eventually('the failure reported', async () => (await f.pools.get('default', 'p')).status.conditions[0]?.reason === REASON.SandboxStartFailed);
      const starts = () => f.driver.calls.filter((c) => c.startsWith('create ')).length;
      const tried = starts();
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(starts() <= tried + 1, `backing off, not retrying in a loop: ${starts() - tried} more starts in 300 ms`);
      f.driver.heal();
      await eventually(
        'the pool full after its back-off',
        async () => (await f.pools.get('default', 'p')).status.conditions[0]?.reason === REASON.PoolFull,
        10_000,
      );
    } finally {
      await f.close();
    }
  });
});

test('a backend without a capability answers 501 and names it', () => {
  const cluster = { kind: 'kubernetes' as const, capabilities: { pause: false, hibernate: true, layerBackups: false, volumes: false } };
  assert.throws(
    () => requireCapability(cluster, 'pause', 'pause sandboxes'),
    (err: Error & { code?: number; reason?: string }) => {
      assert.equal(err.code, 501);
      assert.equal(err.reason, 'NotImplemented');
      assert.match(err.message, /the kubernetes backend cannot pause sandboxes \(capability "pause"\)/);
      return true;
    },
  );
  assert.doesNotThrow(() => requireCapability(cluster, 'hibernate', 'hibernate sandboxes'));
});
