import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat } from '@moat/sdk';
import { run } from '@moat/runtime';
import { sharedImagesDir, startTestServer, type TestServer } from '../helpers/server.js';
import { makeImageLayout, pushLayout, startRegistry, type TestRegistry } from '../helpers/registry.js';

const MiB = 2 ** 20;

/** The entries of one directory of the store (not recursive: layers hold symlinks to anywhere). */
async function entries(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/**
 * Pulls that must stop: a layer that decompresses far beyond the limit (a
 * zip bomb), and a disk that fills up part way. Each is a clear error, and
 * the image store is as it was.
 */
describe('image limits', () => {
  let registry: TestRegistry;
  let work: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-image-limits-'));
    registry = await startRegistry({ auth: false });
  });
  after(async () => {
    await registry?.close();
    await rm(work, { recursive: true, force: true });
  });

  test('a layer that unpacks beyond the limit (a zip bomb) is refused and leaves nothing', async () => {
    // 64 MiB of zeros is a 64 KiB gzip: the download is small, what it unpacks to is not.
    const layout = await makeImageLayout(join(work, 'bomb'), { layers: [{ 'zeros.bin': '\0'.repeat(64 * MiB) }] });
    await pushLayout(layout, registry, 'team/bomb:v1');
    const server: TestServer = await startTestServer({ registries: { certsDir: registry.certsDir }, maxLayerBytes: 8 * MiB });
    try {
      const moat = new Moat({ url: server.url, apiKey: server.adminKey });
      const before = await entries(join(sharedImagesDir(), 'layers'));
      await assert.rejects(moat.images.pull(`${registry.host}/team/bomb:v1`), (e: Error & { code?: number; reason?: string }) => {
        assert.equal(e.code, 422, e.message);
        assert.equal(e.reason, 'UnsafeLayer', e.message);
        assert.match(e.message, new RegExp(`unpacks to more than ${8 * MiB} bytes`));
        return true;
      });
      assert.deepEqual(await entries(join(sharedImagesDir(), 'layers')), before, 'no layer, whole or partial');
      await assert.rejects(moat.images.get(`${registry.host}/team/bomb:v1`), (e: Error & { code?: number }) => e.code === 404);
    } finally {
      await server.close();
    }
  });

  test('a disk that fills up during a pull is 507, and the store is left as it was', async () => {
    // Random bytes do not compress: an 8 MiB layer into a 4 MiB file system.
    const layout = await makeImageLayout(join(work, 'big'), { layers: [{ 'small.txt': 'fits' }, { 'random.b64': randomBytes(6 * MiB).toString('base64') }] });
    await pushLayout(layout, registry, 'team/big:v1');
    const store = join(work, 'small-disk');
    await mkdir(store);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'moat-test-small-disk', store]);
    try {
      const server = await startTestServer({ registries: { certsDir: registry.certsDir }, imagesDir: store, prepareDefaultImage: false });
      try {
        const moat = new Moat({ url: server.url, apiKey: server.adminKey });
        const before = await entries(join(store, 'layers'));
        await assert.rejects(moat.images.pull(`${registry.host}/team/big:v1`), (e: Error & { code?: number; reason?: string }) => {
          assert.equal(e.code, 507, e.message);
          assert.match(e.message, /no space left/i);
          return true;
        });
        // Nothing half-written: no manifest, no scratch file, and a layer is there only whole (the
        // small one finished before the disk filled; a retry reuses it, GC removes it if nothing does).
        assert.deepEqual(await entries(join(store, 'manifests')), [], 'no image was recorded');
        assert.deepEqual(await entries(join(store, 'tmp')), [], 'no scratch file is left');
        const added = (await entries(join(store, 'layers'))).filter((d) => !before.includes(d));
        assert.ok(added.length <= 1, `only the layer that fitted: ${added.join(', ')}`);
        for (const d of added) assert.ok((await entries(join(store, 'layers', d))).includes('layer.json'), `layer ${d} is whole`);
        await assert.rejects(moat.images.get(`${registry.host}/team/big:v1`), (e: Error & { code?: number }) => e.code === 404);
      } finally {
        await server.close();
      }
    } finally {
      await run('umount', [store]);
    }
  });
});
