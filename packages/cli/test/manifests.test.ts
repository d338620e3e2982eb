import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseManifests, specMatches } from '../src/manifests.js';

test('multi-document YAML, empty documents skipped, Lists flattened', () => {
  const text = `
apiVersion: agents.x-k8s.io/v1alpha1
kind: Sandbox
metadata: {name: a}
spec: {}
---
---
kind: List
items:
- {kind: Sandbox, metadata: {name: b}}
- {kind: Sandbox, metadata: {name: c}}
`;
  const ms = parseManifests(text, 'f.yaml');
  assert.deepEqual(
    ms.map((m) => [m.object.metadata.name, m.where]),
    [
      ['a', 'f.yaml document 1'],
      ['b', 'f.yaml document 3 item 1'],
      ['c', 'f.yaml document 3 item 2'],
    ],
  );
});

test('broken documents are reported with their position', () => {
  assert.throws(() => parseManifests('kind: Sandbox\nmetadata: {name: a}\n---\nkind: [unclosed\n', 'f'), /f document 2:/);
  assert.throws(() => parseManifests('- 1\n- 2\n', 'f'), /f document 1: expected an object/);
  assert.throws(() => parseManifests('kind: Sandbox\n', 'f'), /missing "metadata"/);
  assert.throws(() => parseManifests('\n', 'f'), /no objects found/);
});

test('spec matching ignores fields the server filled in, but not changed ones', () => {
  const live = {
    podTemplate: { spec: { runtimeClassName: 'runc', containers: [{ name: 'sandbox', image: 'base', resources: { limits: { cpu: '1', memory: '512Mi' } } }] } },
    volumeClaimTemplates: [{ metadata: { name: 'data' } }],
  };
  assert.ok(specMatches({ podTemplate: { spec: { containers: [{ image: 'base' }] } } }, live));
  assert.ok(specMatches({ podTemplate: { spec: { containers: [{ image: 'base', resources: { limits: { cpu: 1 } } }] } } }, live), 'numbers match their text');
  assert.ok(!specMatches({ podTemplate: { spec: { containers: [{ image: 'python' }] } } }, live));
  assert.ok(!specMatches({ podTemplate: { spec: { containers: [{ image: 'base' }, { image: 'base' }] } } }, live));
  assert.ok(!specMatches({ podTemplate: { spec: { containers: [{ image: 'base', command: ['x'] }] } } }, live));
});
