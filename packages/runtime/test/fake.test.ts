import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SandboxRuntimeSpec } from '../src/drivers/types.js';
import { FakeDriver } from '../src/drivers/fake.js';

const spec = (id: string) => ({ id, hostname: id }) as SandboxRuntimeSpec;

test('the fake driver keeps host state in memory and records every call', async () => {
  const fake = new FakeDriver('gvisor');
  await fake.create(spec('a'));
  assert.equal(await fake.state('a'), 'running');
  await fake.pause('a');
  assert.equal(await fake.state('a'), 'paused');
  assert.deepEqual(await fake.hibernate('a'), { checkpointed: true, bytes: 0 });
  assert.equal(await fake.state('a'), 'stopped');
  assert.equal(await fake.hibernated('a'), true);
  assert.deepEqual(await fake.wake(spec('a')), { restored: true });
  assert.equal(await fake.hibernated('a'), false);
  await fake.destroy('a');
  assert.equal(await fake.state('a'), 'missing');
  assert.deepEqual(fake.calls, [
    'create a',
    'state a',
    'pause a',
    'state a',
    'hibernate a',
    'state a',
    'hibernated a',
    'wake a',
    'hibernated a',
    'destroy a',
    'state a',
  ]);
  assert.throws(() => fake.agent('a'), /fake gvisor driver runs no agent/);
});

test('a test sets host state directly and injects failures', async () => {
  const fake = new FakeDriver('runc', { checkpoint: false });
  fake.setState('b', 'stopped');
  assert.deepEqual(await fake.listIds(), ['b']);
  await assert.rejects(fake.resume('b'), /sandbox b is stopped/);
  fake.setState('b', 'running');
  assert.deepEqual(await fake.hibernate('b'), { checkpointed: false, reason: 'the fake driver cannot save processes' });
  fake.fail('create', 'no space left on device');
  await assert.rejects(fake.create(spec('c')), /no space left on device/);
  fake.heal('create');
  await fake.create(spec('c'));
  fake.setState('c', 'missing');
  assert.deepEqual(await fake.listIds(), ['b']);
});
