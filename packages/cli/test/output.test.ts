import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SANDBOX_KIND, kindByName, tableRows } from '../src/kinds.js';
import { kindOfManifest } from '../src/kinds.js';
import { formatTable, humanAge, humanBytes, render, shortDigest } from '../src/output.js';
import { entriesTable } from '../src/commands/files.js';
import { sandbox } from './helpers.js';

test('tables are aligned with three spaces and no trailing blanks', () => {
  assert.equal(
    formatTable(
      ['NAME', 'STATUS'],
      [
        ['a', 'Running'],
        ['longer-name', 'Pending'],
      ],
    ),
    'NAME          STATUS\na             Running\nlonger-name   Pending\n',
  );
  assert.equal(formatTable(['NAME', 'X'], [['a', '']]), 'NAME   X\na\n');
});

test('ages read like kubectl', () => {
  const now = Date.parse('2026-01-10T00:00:00Z');
  const ago = (s: number) => new Date(now - s * 1000).toISOString();
  assert.equal(humanAge(ago(5), now), '5s');
  assert.equal(humanAge(ago(119), now), '119s');
  assert.equal(humanAge(ago(200), now), '3m20s');
  assert.equal(humanAge(ago(600), now), '10m');
  assert.equal(humanAge(ago(3 * 3600 + 60), now), '3h1m');
  assert.equal(humanAge(ago(30 * 3600), now), '30h');
  assert.equal(humanAge(ago(3 * 86400 + 4 * 3600), now), '3d4h');
  assert.equal(humanAge(ago(400 * 86400), now), '400d');
  assert.equal(humanAge(undefined, now), '<unknown>');
  assert.equal(humanAge(new Date(now + 60_000).toISOString(), now), '<invalid>');
});

test('sizes and digests', () => {
  assert.equal(humanBytes(512), '512B');
  assert.equal(humanBytes(1536), '1.5KiB');
  assert.equal(humanBytes(300 * 2 ** 20), '300MiB');
  assert.equal(shortDigest('sha256:0123456789abcdef'), 'sha256:0123456789ab');
  assert.equal(shortDigest(undefined), '');
});

test('json and yaml renderings of an object', () => {
  assert.equal(render({ a: 1 }, 'json'), '{\n  "a": 1\n}\n');
  assert.equal(render({ a: [1] }, 'yaml'), 'a:\n  - 1\n');
});

test('sandbox table columns, normal and wide', () => {
  const now = Date.parse('2026-01-10T00:00:00Z');
  const s = sandbox('a', { created: new Date(now - 65_000).toISOString() });
  const normal = tableRows(SANDBOX_KIND, [s], false, now);
  assert.deepEqual(normal.headers, ['NAME', 'STATUS', 'RUNTIME', 'IMAGE', 'AGE']);
  assert.deepEqual(normal.rows, [['a', 'Running', 'runc', 'base', '65s']]);
  const wide = tableRows(SANDBOX_KIND, [s], true, now);
  assert.deepEqual(wide.headers, ['NAME', 'STATUS', 'RUNTIME', 'IMAGE', 'AGE', 'IMAGE DIGEST', 'CPU', 'MEMORY', 'PORTS']);
  assert.deepEqual(wide.rows[0].slice(5), ['sha256:0123456789ab', '1', '512Mi', '']);
});

test('resource types resolve by plural, singular, alias and kind; unknown ones list what is supported', () => {
  for (const t of ['sandboxes', 'sandbox', 'sbx', 'Sandbox', 'SANDBOXES']) assert.equal(kindByName(t), SANDBOX_KIND);
  for (const t of ['sandboxwarmpools', 'pool', 'warmpool', 'SandboxWarmPool']) assert.equal(kindByName(t).kind, 'SandboxWarmPool');
  for (const t of ['claim', 'sandboxclaims']) assert.equal(kindByName(t).kind, 'SandboxClaim');
  for (const t of ['template', 'sandboxtemplate']) assert.equal(kindByName(t).kind, 'SandboxTemplate');
  assert.throws(() => kindByName('pods'), /unknown resource type "pods": supported types are sandboxes, sandboxtemplates, sandboxclaims, sandboxwarmpools/);
  assert.equal(kindOfManifest({ apiVersion: 'agents.x-k8s.io/v1alpha1', kind: 'Sandbox' }, 'f'), SANDBOX_KIND);
  assert.equal(kindOfManifest({ apiVersion: 'agents.x-k8s.io/v1beta1', kind: 'Sandbox' }, 'f'), SANDBOX_KIND);
  assert.equal(kindOfManifest({ apiVersion: 'extensions.agents.x-k8s.io/v1beta1', kind: 'SandboxClaim' }, 'f').plural, 'sandboxclaims');
  assert.throws(
    () => kindOfManifest({ kind: 'Pod' }, 'f document 2'),
    /f document 2: unsupported kind "Pod": supported kinds are Sandbox, SandboxTemplate, SandboxClaim, SandboxWarmPool/,
  );
  assert.throws(() => kindOfManifest({ kind: 'Sandbox', apiVersion: 'v1' }, 'f'), /apiVersion "agents.x-k8s.io\/v1alpha1" or "agents.x-k8s.io\/v1beta1"/);
  assert.throws(
    () => kindOfManifest({ kind: 'SandboxClaim', apiVersion: 'agents.x-k8s.io/v1alpha1' }, 'f'),
    /SandboxClaim has apiVersion "extensions.agents.x-k8s.io\/v1alpha1"/,
  );
  assert.throws(() => kindOfManifest({}, 'f'), /missing "kind"/);
});

test('file listings', () => {
  const out = entriesTable([
    { name: 'bin', path: '/bin', type: 'dir', size: 4096, mode: '0755', mtime: '2026-01-01T00:00:00.123Z', uid: 0, gid: 0 },
    { name: 'l', path: '/l', type: 'symlink', size: 3, mode: '0777', mtime: '2026-01-01T00:00:00Z', uid: 0, gid: 0, target: '/bin' },
  ]);
  assert.equal(
    out,
    'MODE    SIZE   MODIFIED               NAME\nd0755          2026-01-01T00:00:00Z   bin/\nl0777   3B     2026-01-01T00:00:00Z   l -> /bin\n',
  );
});
