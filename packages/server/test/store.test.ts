// The store's own operations, on SQLite and on PostgreSQL alike.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Sandbox } from '@moat/core';
import { storedSandbox } from './fixtures.js';
import { onEachDatabase } from './postgres.js';

const named = (name: string, uid: string, createdAt: string): Sandbox => {
  const s = storedSandbox(name, 'Running');
  return { ...s, metadata: { ...s.metadata, uid, creationTimestamp: createdAt } };
};

onEachDatabase((open) => {
  test('sandboxes: insert, read, list in order, status and spec bump resourceVersion, adopt once, delete with events', async () => {
    const store = await open();
    try {
      const t = '2030-01-01T00:00:00.000Z';
      // Same creation time: the name breaks the tie, byte by byte ("a-b" before "ab"), whatever the database's locale.
      for (const [name, uid] of [
        ['ab', 'u1'],
        ['a-b', 'u2'],
        ['B', 'u3'],
      ] as const)
        await store.insertSandbox(named(name, uid, t));
      assert.deepEqual(
        (await store.listSandboxes('default')).map((s) => s.sandbox.metadata.name),
        ['B', 'a-b', 'ab'],
      );
      assert.equal((await store.listSandboxes('elsewhere')).length, 0);
      const got = await store.getSandbox('default', 'ab');
      assert.equal(got?.desired, 'Running');
      assert.equal(got?.sandbox.metadata.resourceVersion, '1');

      const updated = await store.setStatus('u1', { ...got!.sandbox.status, phase: 'Paused' });
      assert.equal(updated?.metadata.resourceVersion, '2');
      assert.equal(updated?.status.phase, 'Paused');
      // Concurrent spec changes: each applies to the other's result.
      await Promise.all(['a', 'b', 'c'].map((v) => store.updateSandboxSpec('u1', (spec) => ({ ...spec, shutdownTime: (spec.shutdownTime ?? '') + v }))));
      const after = (await store.getSandboxByUid('u1'))!.sandbox;
      assert.deepEqual([...after.spec.shutdownTime!].sort(), ['a', 'b', 'c']);
      assert.equal(after.metadata.resourceVersion, '5');
      assert.equal(await store.updateSandboxSpec('missing', (s) => s), undefined);

      await store.setDesired('u2', 'Paused');
      assert.equal((await store.getSandboxByUid('u2'))?.desired, 'Paused');
      const to = { name: 'claimed', labels: { a: 'b' }, annotations: {}, spec: after.spec };
      const adopted = await Promise.all([store.adoptSandbox('u3', 'B', to), store.adoptSandbox('u3', 'B', { ...to, name: 'other' })]);
      assert.equal(adopted.filter(Boolean).length, 1, 'one claim gets the member');
      assert.deepEqual((await store.getSandboxByUid('u3'))?.sandbox.metadata.labels, { a: 'b' });

      await store.addEvent(after, { type: 'Normal', reason: 'One', message: 'first' });
      await store.addEvent(after, { type: 'Warning', reason: 'Two', message: 'second' });
      assert.deepEqual(
        (await store.events('u1')).map((e) => e.reason),
        ['One', 'Two'],
      );
      await store.deleteSandbox('u1');
      assert.equal(await store.getSandboxByUid('u1'), undefined);
      assert.deepEqual(await store.events('u1'), []);
    } finally {
      await store.close();
    }
  });

  test('objects: generation follows spec changes only, also when two updates race', async () => {
    const store = await open();
    try {
      const metadata = { name: 'p', namespace: 'default', uid: 'o1', creationTimestamp: new Date().toISOString(), resourceVersion: '1', generation: 1 };
      await store.insertObject({ kind: 'SandboxWarmPool', metadata, spec: { replicas: 1 }, status: {} });
      const same = await store.updateObject('o1', { spec: { replicas: 1 }, labels: { x: 'y' } });
      assert.equal(same?.metadata.generation, 1);
      assert.equal(same?.metadata.resourceVersion, '2');
      await Promise.all([store.updateObject('o1', { spec: { replicas: 2 } }), store.updateObject('o1', { spec: { replicas: 3 } })]);
      const o = await store.getObject('SandboxWarmPool', 'default', 'p');
      assert.equal(o?.metadata.generation, 3);
      assert.equal((await store.setObjectStatus('o1', { ready: 1 }))?.metadata.resourceVersion, '5');
      assert.equal(await store.updateObject('missing', { spec: {} }), undefined);
      assert.equal((await store.listObjects('SandboxWarmPool')).length, 1);
      assert.equal((await store.listObjects('SandboxClaim')).length, 0);
      await store.deleteObject('o1');
      assert.equal(await store.getObjectByUid('o1'), undefined);
    } finally {
      await store.close();
    }
  });

  test('leases are unique; the egress log keeps the newest, oldest first', async () => {
    const store = await open();
    try {
      assert.equal(await store.insertLease('10.0.0.2', 's1'), true);
      assert.equal(await store.insertLease('10.0.0.2', 's2'), false);
      assert.deepEqual(await store.leases(), [{ address: '10.0.0.2', sandbox_uid: 's1' }]);
      await store.releaseLease('s1');
      assert.deepEqual(await store.leases(), []);
      const sandbox = { uid: 's1', name: 'box', namespace: 'default' };
      for (const n of [1, 2, 3]) await store.addEgress({ time: `t${n}`, sandbox });
      await store.addEgress({ time: 't4' });
      assert.deepEqual(
        (await store.egressLog('s1', 2)).map((r) => (r as { time: string }).time),
        ['t2', 't3'],
      );
    } finally {
      await store.close();
    }
  });
});
