// Runtime classes are one list (packages/runtime/src/drivers/builtins.ts): the server's generic code
// checks, serves and cleans up after whatever drivers are in it, and the list agrees with the API's enum
// (which the end-to-end suites' runtime matrix, testRuntimes in test/helpers/server.ts, runs over).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RUNTIME_CLASSES, SANDBOX_API_VERSION, type RuntimeClassName, type Sandbox } from '@moat/core';
import { builtinDrivers } from '@moat/runtime';
import { FakeDriver } from '@moat/runtime/testing';
import { Activity } from '../src/backends/local/controllers/activity.js';
import { SandboxController } from '../src/backends/local/controllers/sandboxes.js';
import { startDrivers } from '../src/backends/local/drivers.js';
import { Store } from '../src/store/store.js';
import { fakeImages, fakeNetwork, fakeTenancy, silent } from './fixtures.js';

test("the built-in drivers are the API's runtime classes, each once", () => {
  // Constructing a driver touches nothing on the host: the root is only where it would keep its folders.
  const names = builtinDrivers({ root: '/nonexistent', cacheDir: '/nonexistent' }).map((d) => d.name);
  assert.deepEqual([...names].sort(), [...RUNTIME_CLASSES].sort());
});

test('a runtime class added to the list is checked, served and cleaned up after by the generic code', async () => {
  // Stands for a new driver module whose class is in the list: a name nothing else in the server spells.
  const added = new FakeDriver('kata' as RuntimeClassName);
  const broken = new FakeDriver('gvisor');
  broken.fail('check', 'runsc is not installed: apt-get install runsc');
  const said: string[] = [];
  const { drivers, runtimes } = await startDrivers([added, broken], (line) => said.push(line));
  assert.deepEqual(runtimes, { kata: { available: true }, gvisor: { available: false, reason: 'runsc is not installed: apt-get install runsc' } });
  assert.deepEqual(said, ['warning: runtime gvisor unavailable: runsc is not installed: apt-get install runsc']);
  assert.equal(drivers.get('kata'), added);
  assert.equal(drivers.get('gvisor'), undefined);
  assert.equal(drivers.unavailable('gvisor'), 'runsc is not installed: apt-get install runsc');
  assert.equal(drivers.unavailable('kata'), undefined);
  assert.deepEqual(drivers.all(), [added]);

  // A restart: the sandbox the store knows is re-adopted, what it forgot is removed; a driver that does not work here is not asked.
  const store = await Store.open(':memory:');
  try {
    await store.insertSandbox(runningSandbox('known', 'kata'));
    added.setState('known', 'running');
    added.setState('orphan', 'stopped');
    broken.setState('elsewhere', 'running');
    const controller = new SandboxController(store, fakeImages(), drivers, fakeNetwork(), silent, fakeTenancy(), new Activity());
    await controller.recover();
    assert.deepEqual([...added.sandboxes.keys()], ['known']);
    assert.ok(added.calls.includes('destroy orphan'), added.calls.join(', '));
    assert.deepEqual(broken.calls, ['check']);
  } finally {
    await store.close();
  }
});

/** A stored sandbox that was Running and Ready before the restart. */
function runningSandbox(uid: string, runtime: string): Sandbox {
  return {
    apiVersion: SANDBOX_API_VERSION,
    kind: 'Sandbox',
    metadata: { name: uid, namespace: 'default', uid, creationTimestamp: new Date().toISOString(), resourceVersion: '1' },
    spec: { podTemplate: { spec: { runtimeClassName: runtime, containers: [{ name: 'main', image: 'base' }] } } },
    status: {
      phase: 'Running',
      runtimeClassName: runtime,
      conditions: [{ type: 'Ready', status: 'True', reason: 'SandboxRunning', message: '', lastTransitionTime: new Date().toISOString() }],
    },
  };
}
