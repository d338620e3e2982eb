import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { run } from '../../packages/runtime/src/run.js';
import { corruptBlob, makeImageLayout, registryArgs, startRegistry, truncateBlob, type TestRegistry } from '../helpers/registry.js';
import { busyboxImage, pushLayout } from '../helpers/test-images.js';

/** The image fixtures checked against the real tools (skopeo, umoci, distribution), so a Moat failure is Moat's. */
describe('image test fixtures', () => {
  let registry: TestRegistry;
  let work: string;
  let layout: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-fixtures-'));
    registry = await startRegistry();
    layout = await busyboxImage(join(work, 'app'), 'v1');
  });
  after(async () => {
    await registry?.close();
    await rm(work, { recursive: true, force: true });
  });

  const inspect = async (ref: string, args = registryArgs(registry)) =>
    JSON.parse((await run('skopeo', ['inspect', ...args, `docker://${registry.host}/${ref}`])).stdout) as { Digest: string; Layers: string[] };
  const layoutDigest = async (dir: string) =>
    (JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]!.digest;
  const layerDigests = async (dir: string, digest: string) =>
    (JSON.parse(await readFile(join(dir, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as { layers: { digest: string }[] }).layers.map((l) => l.digest);

  test('busyboxImage unpacks with umoci: layers, whiteout and run config', async () => {
    const bundle = join(work, 'bundle');
    await run('umoci', ['unpack', '--rootless', '--image', `${layout}:latest`, bundle]);
    const rootfs = join(bundle, 'rootfs');
    assert.equal(await readFile(join(rootfs, 'app', 'hello.txt'), 'utf8'), 'hello from layer 2\n');
    await assert.rejects(lstat(join(rootfs, 'app', 'removed.txt')), { code: 'ENOENT' });
    assert.equal(await readlink(join(rootfs, 'bin', 'sh')), 'busybox');
    assert.equal((await lstat(join(rootfs, 'tmp'))).mode & 0o7777, 0o1777);
    assert.equal((await lstat(join(rootfs, 'bin', 'busybox'))).mode & 0o777, 0o755);
    const spec = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as { process: { cwd: string; env: string[]; args: string[] } };
    assert.equal(spec.process.cwd, '/app');
    assert.ok(spec.process.env.includes('GREETING=hi'));
    assert.deepEqual(spec.process.args.slice(0, 2), ['/bin/sh', '-c']);
  });

  test('pushLayout keeps the layout manifest; skopeo inspect sees it with the creds and CA', async () => {
    const digest = await pushLayout(layout, registry, 'team/app:v1');
    assert.equal(digest, await layoutDigest(layout));
    const seen = await inspect('team/app:v1');
    assert.equal(seen.Digest, digest);
    assert.equal(seen.Layers.length, 2);
  });

  test('a wrong password is refused', async () => {
    const args = ['--cert-dir', join(registry.certsDir, registry.host), '--creds', `${registry.username}:wrong`];
    await assert.rejects(inspect('team/app:v1', args), /unauthorized|401|authentication required/i);
  });

  test('corruptBlob and truncateBlob make a copy fail', async () => {
    const liar = await makeImageLayout(join(work, 'liar'), { layers: [{ 'a.txt': 'the truth' }, { 'b.txt': 'more truth' }] });
    const [a, b] = await layerDigests(liar, await pushLayout(liar, registry, 'team/liar:v1'));
    await corruptBlob(registry, a!);
    const copy = (dest: string) =>
      run('skopeo', [
        'copy',
        '--insecure-policy',
        ...registryArgs(registry, 'src'),
        `docker://${registry.host}/team/liar:v1`,
        `oci:${join(work, dest)}:latest`,
      ]);
    await assert.rejects(copy('corrupt'), /digest/i);
    await corruptBlob(registry, a!); // flipping again restores it
    await truncateBlob(registry, b!);
    await assert.rejects(copy('truncated'), /EOF|closed|remaining|short/i);
  });

  test('without auth and TLS', async () => {
    const plain = await startRegistry({ auth: false, tls: false });
    try {
      assert.ok(plain.url.startsWith('http://'));
      const digest = await pushLayout(layout, plain, 'team/app:v1');
      const seen = JSON.parse((await run('skopeo', ['inspect', ...registryArgs(plain), `docker://${plain.host}/team/app:v1`])).stdout) as { Digest: string };
      assert.equal(seen.Digest, digest);
    } finally {
      await plain.close();
    }
  });
});
