// The Moat image has two recipes: deploy/kubernetes/Dockerfile for real clusters, and the dev cluster's offline
// build (deploy/dev-cluster/moat-images.sh). Both must give the image the same user, environment, entry point
// and port, or what the in-cluster test proves would not hold for the image users build.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

const ROOT = join(import.meta.dirname, '..', '..');

interface ImageConfig {
  User: string;
  Entrypoint: string[];
  Env: string[];
  ExposedPorts: Record<string, object>;
}

function devClusterConfig(): ImageConfig {
  const script = readFileSync(join(ROOT, 'deploy/dev-cluster/moat-images.sh'), 'utf8');
  const m = /^MOAT_IMAGE_CONFIG='(.*)'$/m.exec(script);
  assert.ok(m, 'moat-images.sh sets MOAT_IMAGE_CONFIG');
  return JSON.parse(m[1]!) as ImageConfig;
}

/** The final stage's USER, ENV, ENTRYPOINT and EXPOSE, as the same config. */
function dockerfileConfig(): ImageConfig {
  const stages = readFileSync(join(ROOT, 'deploy/kubernetes/Dockerfile'), 'utf8').split(/^(?=FROM )/m);
  const final = stages[stages.length - 1]!.split('\n');
  const config: ImageConfig = { User: '', Entrypoint: [], Env: [], ExposedPorts: {} };
  for (const line of final) {
    const [instruction, ...rest] = line.split(' ');
    const arg = rest.join(' ');
    if (instruction === 'USER') config.User = arg;
    if (instruction === 'ENV') config.Env.push(arg);
    if (instruction === 'ENTRYPOINT') config.Entrypoint = JSON.parse(arg) as string[];
    if (instruction === 'EXPOSE') config.ExposedPorts[`${arg}/tcp`] = {};
  }
  return config;
}

test('the Dockerfile and the dev cluster build the Moat image with the same user, environment, entry point and port', () => {
  const dev = devClusterConfig();
  assert.deepEqual({ ...dockerfileConfig(), Env: dockerfileConfig().Env.sort() }, { ...dev, Env: [...dev.Env].sort() });
});

test('the entry point and MOAT_INIT_BINARY name files that scripts/stage-moat.ts stages', () => {
  const dev = devClusterConfig();
  const stage = readFileSync(join(ROOT, 'scripts/stage-moat.ts'), 'utf8');
  const init = dev.Env.find((e) => e.startsWith('MOAT_INIT_BINARY='))!.split('=')[1]!;
  for (const path of [dev.Entrypoint[1]!, init]) {
    assert.match(path, /^\/opt\/moat\//, path);
    assert.ok(stage.includes(`'${path.slice('/opt/moat/'.length)}'`), `stage-moat.ts copies ${path.slice('/opt/moat/'.length)}`);
  }
});
