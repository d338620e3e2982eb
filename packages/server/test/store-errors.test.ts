import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isUniqueViolation } from '../src/store/errors.js';
import { onEachDatabase } from './postgres.js';

const failure = (p: Promise<unknown>) =>
  p.then(
    () => assert.fail('expected the statement to fail'),
    (err: unknown) => err,
  );

onEachDatabase((open) => {
  test('isUniqueViolation: a taken primary key or unique column, not another constraint', async () => {
    const store = await open();
    try {
      const now = new Date().toISOString();
      const user = { name: 'u', role: 'member', quota: '{}', created_at: now };
      await store.db.insertInto('users').values(user).execute();
      assert.ok(isUniqueViolation(await failure(store.db.insertInto('users').values(user).execute())));
      await store.db.insertInto('agents').values({ user: 'u', name: 'a', namespace: 'ns', quota: '{}', created_at: now }).execute();
      assert.ok(
        isUniqueViolation(
          await failure(store.db.insertInto('agents').values({ user: 'u', name: 'b', namespace: 'ns', quota: '{}', created_at: now }).execute()),
        ),
      );
      assert.ok(
        !isUniqueViolation(
          await failure(
            store.db
              .insertInto('users')
              .values({ ...user, name: 'v', role: null as unknown as string })
              .execute(),
          ),
        ),
      );
    } finally {
      await store.close();
    }
  });
});

test('isUniqueViolation: only a database error', () => {
  assert.ok(isUniqueViolation(Object.assign(new Error('duplicate key value violates unique constraint "users_pkey"'), { code: '23505' })));
  assert.ok(!isUniqueViolation(new Error('UNIQUE, but not from a database')));
  assert.ok(!isUniqueViolation(undefined));
});
