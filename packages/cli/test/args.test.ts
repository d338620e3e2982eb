import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDuration, parseIntArg, parseKeyValues, parseRemotePath, parseResourceRef } from '../src/args.js';
import { parseFor } from '../src/commands/wait.js';
import { CliError } from '../src/errors.js';

test('KEY=VALUE pairs keep "=" in values and reject a missing key', () => {
  assert.deepEqual(parseKeyValues(['A=1', 'B=x=y', 'C='], '--env'), { A: '1', B: 'x=y', C: '' });
  assert.deepEqual(parseKeyValues(undefined, '--env'), {});
  assert.throws(() => parseKeyValues(['=v'], '--env'), /invalid --env "=v": expected KEY=VALUE/);
  assert.throws(() => parseKeyValues(['NOVALUE'], '--label'), CliError);
});

test('durations: bare seconds, units, compound, rounded up', () => {
  assert.equal(parseDuration('60'), 60);
  assert.equal(parseDuration('60s'), 60);
  assert.equal(parseDuration('2m'), 120);
  assert.equal(parseDuration('1m30s'), 90);
  assert.equal(parseDuration('1h'), 3600);
  assert.equal(parseDuration('30d'), 30 * 86400);
  assert.equal(parseDuration('1500ms'), 2);
  assert.equal(parseDuration('2.5'), 3);
  for (const bad of ['', 'abc', '10x', '5s garbage', '-1']) assert.throws(() => parseDuration(bad, '--timeout'), /invalid --timeout/);
});

test('integers are bounded', () => {
  assert.equal(parseIntArg('8080', '--port', 0, 65535), 8080);
  assert.throws(() => parseIntArg('70000', '--port', 0, 65535), /from 0 to 65535/);
  assert.throws(() => parseIntArg('1.5', '--port'), /integer/);
});

test('NAME:/path is remote; everything else is local', () => {
  assert.deepEqual(parseRemotePath('my-sbx:/workspace/a.txt'), { sandbox: 'my-sbx', path: '/workspace/a.txt' });
  assert.deepEqual(parseRemotePath('s:/'), { sandbox: 's', path: '/' });
  assert.equal(parseRemotePath('./a:b'), null);
  assert.equal(parseRemotePath('/tmp/x:y'), null);
  assert.equal(parseRemotePath('file.txt'), null);
  assert.equal(parseRemotePath('-'), null);
  assert.equal(parseRemotePath('Upper:/x'), null, 'not a DNS-1123 name, so a local file');
  assert.equal(parseRemotePath(':/x'), null);
  assert.throws(() => parseRemotePath('sbx:work/a'), /must be absolute \(sbx:\/work\/a\).*\.\/sbx:work\/a/);
});

test('TYPE/NAME references', () => {
  assert.deepEqual(parseResourceRef(['sandbox/foo']), ['sandbox', 'foo']);
  assert.deepEqual(parseResourceRef(['sandbox', 'foo']), ['sandbox', 'foo']);
  assert.throws(() => parseResourceRef(['foo']), /TYPE\/NAME/);
  assert.throws(() => parseResourceRef(['sandbox/']), /TYPE\/NAME/);
});

test('--for=condition=NAME', () => {
  assert.equal(parseFor('condition=Ready'), 'Ready');
  assert.equal(parseFor('condition=Ready=True'), 'Ready');
  assert.throws(() => parseFor('delete'), /use --for=condition=NAME/);
});
