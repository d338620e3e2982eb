import { ExecError, MoatError } from '@moat/sdk';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { exitCodeOf, TIMED_OUT_EXIT_CODE } from '../src/commands/exec.js';
import { CliError, exitCodeFor, isExpected } from '../src/errors.js';

test("a command's exit code is passed through", () => {
  assert.equal(exitCodeOf({ exitCode: 0, signal: null, timedOut: false }), 0);
  assert.equal(exitCodeOf({ exitCode: 3, signal: null, timedOut: false }), 3);
  assert.equal(exitCodeOf({ exitCode: 137, signal: 'SIGKILL', timedOut: false }), 137);
});

test('a signal without a 128+N code still becomes 128+N', () => {
  assert.equal(exitCodeOf({ exitCode: -1, signal: 'SIGTERM', timedOut: false }), 143);
});

test('a timeout is 124 and says so', () => {
  const warnings: string[] = [];
  assert.equal(
    exitCodeOf({ exitCode: 137, signal: 'SIGKILL', timedOut: true }, (m) => warnings.push(m)),
    TIMED_OUT_EXIT_CODE,
  );
  assert.equal(TIMED_OUT_EXIT_CODE, 124);
  assert.match(warnings[0], /timed out/);
});

test('errors map to exit codes: 127 not found, 126 not permitted, else 1', () => {
  assert.equal(exitCodeFor(new ExecError('NotFound', 'x: not found')), 127);
  assert.equal(exitCodeFor(new ExecError('Forbidden', 'x: permission denied')), 126);
  assert.equal(exitCodeFor(new MoatError(404, 'NotFound', 'sandbox "x" not found')), 1, 'a missing sandbox is not a missing program');
  assert.equal(exitCodeFor(new CliError('bad', 2)), 2);
  assert.equal(exitCodeFor(new Error('bug')), 1);
  assert.ok(isExpected(new MoatError(0, 'Unavailable', 'down')));
  assert.ok(isExpected(Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT', syscall: 'open' })));
  assert.ok(!isExpected(new TypeError('x is undefined')));
});
