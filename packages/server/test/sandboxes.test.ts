// The sandbox controller over the fake driver and an in-memory store: desired state and its one reconcile,
// and recover() over every (recorded phase, host state) pair. No root, no processes: milliseconds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { SandboxStatus } from '@moat/core';
import type { RuntimeState } from '@moat/runtime';
import type { Desired } from '../src/store/store.js';
import { controllerFixture, insertAs, storedSandbox } from './fixtures.js';

const body = (name: string) => ({ metadata: { name }, spec: storedSandbox(name, 'Pending').spec });

describe('desired state', () => {
  test('create converges to Running; pause, resume and hibernate record the desire and converge to it', async () => {
    const f = await controllerFixture();
    try {
      const created = await f.sandboxes.create('default', body('a'));
      const uid = created.metadata.uid;
      await f.sandboxes.waitFor('default', 'a', 'Ready', 2000);
      assert.equal(f.driver.sandboxes.get(uid)?.state, 'running');
      assert.ok(f.network.attachedUids.has(uid), 'its network is made');

      const paused = await f.sandboxes.pause('default', 'a');
      assert.equal(paused.status.phase, 'Paused');
      assert.equal((await f.store.getSandboxByUid(uid))?.desired, 'Paused');
      assert.equal(f.driver.sandboxes.get(uid)?.state, 'paused');
      assert.equal((await f.sandboxes.pause('default', 'a')).status.phase, 'Paused', 'pausing a paused sandbox is a no-op');

      assert.equal((await f.sandboxes.resume('default', 'a')).status.phase, 'Running');
      assert.equal((await f.store.getSandboxByUid(uid))?.desired, 'Running');

      const hibernated = await f.sandboxes.hibernate('default', 'a');
      assert.equal(hibernated.status.phase, 'Hibernated');
      assert.equal(hibernated.status.conditions.find((c) => c.type === 'Hibernated')?.reason, 'StoppedWithDisks');
      await assert.rejects(f.sandboxes.pause('default', 'a'), /only a Running sandbox can be paused/);

      const woken = await f.sandboxes.wake('default', 'a');
      assert.equal(woken.status.phase, 'Running');
      assert.deepEqual(
        (await f.sandboxes.events(uid)).map((e) => e.reason),
        ['Started', 'Paused', 'Resumed', 'HibernatedWithoutMemory', 'Woken'],
      );
    } finally {
      await f.close();
    }
  });

  test('a step that fails leaves the desire recorded and the phase unchanged; the next reconcile converges', async () => {
    const f = await controllerFixture();
    try {
      const uid = (await f.sandboxes.create('default', body('b'))).metadata.uid;
      await f.sandboxes.waitFor('default', 'b', 'Ready', 2000);
      f.driver.fail('pause');
      await assert.rejects(f.sandboxes.pause('default', 'b'), /pause failed/);
      const after = await f.store.getSandboxByUid(uid);
      assert.equal(after?.sandbox.status.phase, 'Running');
      assert.equal(after?.desired, 'Paused');
      f.driver.heal();
      await f.sandboxes.recover(); // as after a restart
      assert.equal((await f.store.getSandboxByUid(uid))?.sandbox.status.phase, 'Paused');
      assert.equal(f.driver.sandboxes.get(uid)?.state, 'paused');
    } finally {
      await f.close();
    }
  });

  test('delete tears down the host state, the network and the record', async () => {
    const f = await controllerFixture();
    try {
      const uid = (await f.sandboxes.create('default', body('c'))).metadata.uid;
      await f.sandboxes.waitFor('default', 'c', 'Ready', 2000);
      await f.sandboxes.delete('default', 'c', true);
      assert.equal(await f.store.getSandboxByUid(uid), undefined);
      assert.equal(f.driver.sandboxes.has(uid), false);
      assert.equal(f.network.attachedUids.has(uid), false);
    } finally {
      await f.close();
    }
  });

  test('a start that fails is Failed with the reason, and leaves nothing on the host', async () => {
    const f = await controllerFixture();
    try {
      f.driver.fail('create', 'no space left on device');
      const uid = (await f.sandboxes.create('default', body('d'))).metadata.uid;
      await assert.rejects(f.sandboxes.waitFor('default', 'd', 'Ready', 2000), /failed: no space left on device/);
      assert.equal(f.driver.sandboxes.has(uid), false);
      assert.equal(f.network.attachedUids.has(uid), false);
    } finally {
      await f.close();
    }
  });
});

/**
 * After a restart, for each recorded phase and host state: the phase the record ends in, and the host state.
 * `checkpoint`: a complete saved state of the processes is on the host.
 */
const RECOVERY: { phase: SandboxStatus['phase']; desired?: Desired; state: RuntimeState; checkpoint?: true; want: [SandboxStatus['phase'], RuntimeState] }[] = [
  // Running and paused sandboxes that still run are re-adopted; the host follows the record.
  { phase: 'Running', state: 'running', want: ['Running', 'running'] },
  { phase: 'Running', state: 'paused', want: ['Running', 'running'] },
  { phase: 'Paused', state: 'paused', want: ['Paused', 'paused'] },
  { phase: 'Paused', state: 'running', want: ['Paused', 'paused'] },
  // Their processes died with the host: started again on their disks (and paused again, as desired).
  { phase: 'Running', state: 'stopped', want: ['Running', 'running'] },
  { phase: 'Running', state: 'missing', want: ['Running', 'running'] },
  { phase: 'Paused', state: 'stopped', want: ['Paused', 'paused'] },
  { phase: 'Paused', state: 'missing', want: ['Paused', 'paused'] },
  // A hibernate cut short after the save: the record follows the host.
  { phase: 'Running', desired: 'Hibernated', state: 'stopped', checkpoint: true, want: ['Hibernated', 'stopped'] },
  { phase: 'Paused', desired: 'Hibernated', state: 'stopped', checkpoint: true, want: ['Hibernated', 'stopped'] },
  // ... or before it: the hibernate is done now.
  { phase: 'Running', desired: 'Hibernated', state: 'running', want: ['Hibernated', 'stopped'] },
  // Hibernated stays so; one found running is a wake cut short after the restore.
  { phase: 'Hibernated', state: 'stopped', want: ['Hibernated', 'stopped'] },
  { phase: 'Hibernated', state: 'missing', want: ['Hibernated', 'missing'] },
  { phase: 'Hibernated', state: 'stopped', checkpoint: true, want: ['Hibernated', 'stopped'] },
  { phase: 'Hibernated', desired: 'Running', state: 'running', want: ['Running', 'running'] },
  { phase: 'Hibernated', desired: 'Running', state: 'paused', want: ['Running', 'running'] },
  // ... or before it: the wake is done now.
  { phase: 'Hibernated', desired: 'Running', state: 'stopped', checkpoint: true, want: ['Running', 'running'] },
  // Never started (a crash right after the record), or failed: started now.
  { phase: 'Pending', state: 'missing', want: ['Running', 'running'] },
  { phase: 'Pending', state: 'stopped', want: ['Running', 'running'] },
  { phase: 'Failed', state: 'missing', want: ['Running', 'running'] },
];

describe('recover() over every (phase, host state) pair', () => {
  for (const r of RECOVERY) {
    test(`${r.phase}${r.desired ? ` (desired ${r.desired})` : ''} on a host that has it ${r.state}${r.checkpoint ? ' with a checkpoint' : ''}: ${r.want.join(', ')}`, async () => {
      const f = await controllerFixture({ checkpoint: true });
      try {
        const s = storedSandbox('s', r.phase);
        // The desire a record of that phase has: a paused or hibernated sandbox was asked to be so.
        await insertAs(f.store, s, r.desired ?? (r.phase === 'Paused' || r.phase === 'Hibernated' ? r.phase : 'Running'));
        f.driver.setState(s.metadata.uid, r.state);
        if (r.checkpoint) f.driver.sandboxes.get(s.metadata.uid)!.checkpointed = true;
        f.driver.setState('orphan', 'running');
        await f.sandboxes.recover();
        const after = await f.store.getSandboxByUid(s.metadata.uid);
        assert.deepEqual([after?.sandbox.status.phase, f.driver.sandboxes.get(s.metadata.uid)?.state ?? 'missing'], r.want);
        assert.equal(f.driver.sandboxes.has('orphan'), false, 'host state no record points to is removed');
      } finally {
        await f.close();
      }
    });
  }

  test('a delete cut short is finished', async () => {
    const f = await controllerFixture();
    try {
      const s = storedSandbox('gone', 'Terminating');
      await insertAs(f.store, s, 'Deleted');
      f.driver.setState(s.metadata.uid, 'running');
      await f.sandboxes.recover();
      assert.equal(await f.store.getSandboxByUid(s.metadata.uid), undefined);
      assert.equal(f.driver.sandboxes.has(s.metadata.uid), false);
    } finally {
      await f.close();
    }
  });
});
