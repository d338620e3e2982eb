// Idle reclaim and scheduled shutdown: the pure rules, and the lifecycle controller's steps and requeue-after
// over the real sandbox controller, the fake driver and an in-memory store. The clock is passed in.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Sandbox } from '@moat/core';
import { LifecycleController } from '../src/backends/local/controllers/lifecycle.js';
import { checkIdlePolicy, idleStep, nextIdleStepIn } from '../src/backends/local/controllers/rules.js';
import type { AuditLog } from '../src/audit/log.js';
import { controllerFixture, silent, storedSandbox } from './fixtures.js';

const withIdle = (phase: Sandbox['status']['phase']) => {
  const s = storedSandbox('idle', phase);
  s.spec.idlePolicy = { pauseAfterSeconds: 10, hibernateAfterSeconds: 20, deleteAfterSeconds: 30 };
  return s;
};

describe('idle rules', () => {
  test('the furthest step reached, in the order pause, hibernate, delete', () => {
    assert.equal(idleStep(withIdle('Running'), 9_999), undefined);
    assert.equal(idleStep(withIdle('Running'), 10_000), 'pause');
    assert.equal(idleStep(withIdle('Running'), 20_000), 'hibernate');
    assert.equal(idleStep(withIdle('Paused'), 15_000), undefined, 'a paused sandbox is not paused again');
    assert.equal(idleStep(withIdle('Paused'), 20_000), 'hibernate');
    assert.equal(idleStep(withIdle('Hibernated'), 25_000), undefined);
    assert.equal(idleStep(withIdle('Hibernated'), 30_000), 'delete');
    assert.equal(idleStep(withIdle('Running'), 0), undefined, 'in use');
  });

  test('when the next step falls due', () => {
    assert.equal(nextIdleStepIn(withIdle('Running'), 0), 10_000);
    assert.equal(nextIdleStepIn(withIdle('Running'), 4_000), 6_000);
    assert.equal(nextIdleStepIn(withIdle('Paused'), 12_000), 8_000, 'a paused sandbox waits for its hibernate');
    assert.equal(nextIdleStepIn(withIdle('Hibernated'), 21_000), 9_000);
    assert.equal(nextIdleStepIn(storedSandbox('none', 'Running'), 0), undefined, 'no idle policy, no deadline');
  });

  test('steps given out of order are refused', () => {
    assert.throws(
      () => checkIdlePolicy({ pauseAfterSeconds: 20, hibernateAfterSeconds: 10 }, 'spec.idlePolicy'),
      /hibernateAfterSeconds \(10\) must be later than pauseAfterSeconds \(20\)/,
    );
    assert.doesNotThrow(() => checkIdlePolicy({ pauseAfterSeconds: 10, deleteAfterSeconds: 11 }, 'spec.idlePolicy'));
  });
});

const settled = () => new Promise((r) => setTimeout(r, 50));

async function lifecycleFixture() {
  const f = await controllerFixture();
  const audited: string[] = [];
  const audit = { record: async (e: { action: string }) => void audited.push(e.action) } as unknown as AuditLog;
  const s = f.sandboxes;
  const lifecycle = new LifecycleController(
    f.store,
    {
      pause: (ns, n) => s.pause(ns, n),
      hibernate: (ns, n) => s.hibernate(ns, n),
      expire: (ns, n) => s.expire(ns, n),
      delete: (ns, n) => s.delete(ns, n, true),
      deleteClaim: async () => {},
    },
    f.activity,
    audit,
    silent,
    (l) => s.onChange(l),
  );
  return { ...f, lifecycle, audited, close: async () => (lifecycle.stop(), await f.close()) };
}

describe('lifecycle controller', () => {
  test('an idle sandbox is paused, then hibernated, then deleted, each step audited; nothing polls in between', async () => {
    const f = await lifecycleFixture();
    try {
      const created = await f.sandboxes.create('default', { metadata: { name: 'idle' }, spec: withIdle('Pending').spec });
      const uid = created.metadata.uid;
      await f.sandboxes.waitFor('default', 'idle', 'Ready', 2000);
      await settled(); // the look the sandbox's own changes asked for
      const t0 = Date.now();
      const due = f.lifecycle.nextCheck(uid);
      assert.ok(due !== undefined && due >= t0 + 9_000 && due <= t0 + 10_500, `looked at again when the pause falls due, not sooner: ${due! - t0} ms`);
      const phase = async () => (await f.store.getSandboxByUid(uid))?.sandbox.status.phase;
      await f.lifecycle.reconcile(uid, t0 + 10_500);
      assert.equal(await phase(), 'Paused');
      await f.lifecycle.reconcile(uid, t0 + 20_500);
      assert.equal(await phase(), 'Hibernated');
      await f.lifecycle.reconcile(uid, t0 + 30_500);
      assert.equal(await f.store.getSandboxByUid(uid), undefined);
      assert.deepEqual(f.audited, ['lifecycle.pause', 'lifecycle.hibernate', 'lifecycle.delete']);
    } finally {
      await f.close();
    }
  });

  test('a use moves the deadline: the step waits for the sandbox to be idle that long again', async () => {
    const f = await lifecycleFixture();
    try {
      const uid = (await f.sandboxes.create('default', { metadata: { name: 'busy' }, spec: withIdle('Pending').spec })).metadata.uid;
      await f.sandboxes.waitFor('default', 'busy', 'Ready', 2000);
      const release = f.activity.hold(uid); // a running exec
      await f.lifecycle.reconcile(uid, Date.now() + 60_000);
      assert.equal((await f.store.getSandboxByUid(uid))?.sandbox.status.phase, 'Running', 'a sandbox in use is not idle');
      release();
    } finally {
      await f.close();
    }
  });

  test('shutdownTime with shutdownPolicy Retain expires the sandbox: hibernated, Expired, refused until extended', async () => {
    const f = await lifecycleFixture();
    try {
      const spec = { ...storedSandbox('ttl', 'Pending').spec, shutdownTime: new Date(Date.now() + 5_000).toISOString() };
      const uid = (await f.sandboxes.create('default', { metadata: { name: 'ttl' }, spec })).metadata.uid;
      await f.sandboxes.waitFor('default', 'ttl', 'Ready', 2000);
      await settled();
      const due = f.lifecycle.nextCheck(uid)! - Date.now();
      assert.ok(due > 3_000 && due <= 5_000, `scheduled for the shutdownTime: in ${due} ms`);
      await f.lifecycle.reconcile(uid, Date.now() + 6_000);
      const s = (await f.store.getSandboxByUid(uid))!.sandbox;
      assert.equal(s.status.phase, 'Hibernated');
      assert.equal(s.status.conditions.find((c) => c.type === 'Expired')?.status, 'True');
      await assert.rejects(f.sandboxes.wake('default', 'ttl'), /extend it/);
    } finally {
      await f.close();
    }
  });
});
