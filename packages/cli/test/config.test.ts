import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { configPath, keyHint, readConfig, resolveConnection, writeConfig } from '../src/config.js';

test('config file location: MOAT_CONFIG, then XDG_CONFIG_HOME, then ~/.config', () => {
  assert.equal(configPath({ MOAT_CONFIG: '/c/m.json', XDG_CONFIG_HOME: '/x', HOME: '/h' }), '/c/m.json');
  assert.equal(configPath({ XDG_CONFIG_HOME: '/x', HOME: '/h' }), join('/x', 'moat', 'config.json'));
  assert.equal(configPath({ HOME: '/h' }), join('/h', '.config', 'moat', 'config.json'));
});

test('env overrides the file field by field', () => {
  const file = { url: 'http://file:1', apiKey: 'file-key', namespace: 'team' };
  assert.deepEqual(resolveConnection({}, file, 'f'), {
    url: 'http://file:1',
    urlFrom: 'config',
    apiKey: 'file-key',
    apiKeyFrom: 'config',
    namespace: 'team',
    configFile: 'f',
  });
  const both = resolveConnection({ MOAT_URL: 'http://env:2', MOAT_API_KEY: 'env-key', MOAT_NAMESPACE: 'ns' }, file, 'f');
  assert.equal(both.url, 'http://env:2');
  assert.equal(both.apiKey, 'env-key');
  assert.equal(both.apiKeyFrom, 'env');
  assert.equal(both.namespace, 'ns');
  const keyOnly = resolveConnection({ MOAT_API_KEY: 'env-key' }, file, 'f');
  assert.equal(keyOnly.url, 'http://file:1');
  assert.equal(keyOnly.apiKey, 'env-key');
});

test("the file's key is never sent to a server named by MOAT_URL", () => {
  const file = { url: 'http://127.0.0.1:6628', apiKey: 'admin' };
  assert.equal(resolveConnection({ MOAT_URL: 'http://elsewhere:6628' }, file, 'f').apiKey, undefined);
  assert.equal(resolveConnection({ MOAT_URL: 'http://127.0.0.1:6628/' }, file, 'f').apiKey, 'admin');
});

test('nothing configured leaves url unset and namespace default', () => {
  const c = resolveConnection({}, {}, 'f');
  assert.equal(c.url, undefined);
  assert.equal(c.apiKey, undefined);
  assert.equal(c.namespace, 'default');
});

test('config is written 0600 and read back; broken JSON is a clear error', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'moat-cli-'));
  try {
    const file = join(dir, 'nested', 'config.json');
    assert.deepEqual(await readConfig(file), {});
    await writeConfig(file, { url: 'http://a', apiKey: 'k' });
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(await readConfig(file), { url: 'http://a', apiKey: 'k' });
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), { url: 'http://a', apiKey: 'k' });
    await writeFile(file, '{nope');
    await assert.rejects(readConfig(file), /is not valid JSON/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('key hints never reveal the key', () => {
  const key = 'moat_abcdefghijklmnopqrstuvwxyz0123456789';
  const hint = keyHint(key)!;
  assert.ok(hint.length < 10 && !hint.includes(key.slice(6)));
  assert.equal(keyHint('short'), '(set)');
  assert.equal(keyHint(undefined), undefined);
});
