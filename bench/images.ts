// `npm run bench -- images`: pulling and unpacking a multi-layer image of about 300 MB from a registry on loopback,
// against `skopeo copy` + `umoci unpack` of the same image in the same run; then create → first exec of the pulled
// image (cold: the first sandbox; warm: a second one of the same image, against `base` in the same run).
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageStore, RegistryClient, parseReference, run } from '@moat/runtime';
import { NS, createReady, sh, startTestServer } from '../test/helpers/server.js';
import { pushLayout } from '../test/helpers/test-images.js';
import { startRegistry } from '../test/helpers/registry.js';
import { layeredImageFrom } from './image-fixture.js';
import { row, summary, time } from './stats.js';

const N = Number(process.env.BENCH_IMAGES_N ?? 3);
const SANDBOXES = Number(process.env.BENCH_IMAGES_SANDBOXES ?? 10);

export async function benchImages() {
  console.log('\n== images: pull + unpack of a ~300 MB multi-layer image from a loopback registry ==');
  const work = await mkdtemp(join(tmpdir(), 'moat-bench-images-'));
  // Plain HTTP without a login, so the baseline and Moat pay for the same transfer and nothing else.
  const registry = await startRegistry({ auth: false, tls: false });
  const server = await startTestServer();
  try {
    const layout = await layeredImageFrom(join(work, 'layout'));
    await pushLayout(layout.dir, registry, 'bench/big:v1');
    const ref = `${registry.host}/bench/big:v1`;
    console.log(`  image: ${layout.layers} layers, ${(layout.compressedBytes / 1e6).toFixed(0)} MB compressed, ${(layout.bytes / 1e6).toFixed(0)} MB unpacked`);

    const baseline: number[] = [];
    const moat: number[] = [];
    for (let i = 0; i < N; i++) {
      const dir = join(work, `baseline-${i}`);
      await mkdir(dir);
      baseline.push(
        await time(async () => {
          await run('skopeo', ['copy', '--insecure-policy', '--src-tls-verify=false', `docker://${ref}`, `oci:${dir}/oci:v1`]);
          await run('umoci', ['unpack', '--image', `${dir}/oci:v1`, `${dir}/bundle`]);
        }),
      );
      await rm(dir, { recursive: true, force: true });
      // A fresh store each time: every layer is fetched, verified and unpacked.
      const store = new ImageStore(join(work, `store-${i}`));
      const client = new RegistryClient({});
      moat.push(await time(() => store.pull(client.source(parseReference(ref)))));
      await rm(store.dir, { recursive: true, force: true });
    }
    const b = row('skopeo copy + umoci unpack (baseline)', baseline);
    const m = row('Moat pull (fetch, verify, unpack)', moat, baseline);
    console.log(`  target: within 1.3× of the baseline: ${m.p50 <= 1.3 * b.p50 ? 'met' : 'NOT met'}`);

    console.log('\n== images: create → first exec ==');
    const api = await server.api('/apis/moat.dev/v1/namespaces/default/images/pull', { method: 'POST', json: { reference: ref } });
    await api.text();
    const firstExec = async (name: string, image: string) =>
      time(async () => {
        await createReady(server, name, { image });
        const r = await sh(server, name, 'true');
        if (r.exit?.exitCode !== 0) throw new Error(`exec in ${name}: ${JSON.stringify(r)}`);
      });
    const cold = [await firstExec('bench-img-cold', ref)];
    const warm: number[] = [];
    const base: number[] = [];
    for (let i = 0; i < SANDBOXES; i++) {
      base.push(await firstExec(`bench-base-${i}`, 'base'));
      warm.push(await firstExec(`bench-img-${i}`, ref));
    }
    row('base (baseline)', base);
    row('pulled image, first sandbox', cold, base);
    const w = row('pulled image, another sandbox', warm, base);
    console.log(`  target: another sandbox ≤ 150 ms p50: ${w.p50 <= 150 ? 'met' : 'NOT met'} (base p50 ${summary(base).p50.toFixed(1)} ms)`);
    for (const n of ['bench-img-cold', ...warm.map((_, i) => `bench-img-${i}`), ...base.map((_, i) => `bench-base-${i}`)]) {
      await server.api(`${NS}/${n}`, { method: 'DELETE' });
    }
  } finally {
    await server.close();
    await registry.close();
    await rm(work, { recursive: true, force: true });
  }
}
