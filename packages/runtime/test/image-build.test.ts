import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MoatError } from '@moat/core';
import { buildImage, type BuildRequest, type BuildStep } from '../src/images/build.js';
import { run } from '../src/run.js';

/**
 * The Dockerfile builder with the real buildah (as root, no network): FROM a
 * Moat image given as an OCI layout, two stages, the result as a layout, a
 * failing step, RUN in a user namespace, bad input and an unknown short name.
 */
describe('Dockerfile builds', () => {
  let work: string;
  let base: string;
  let storageDir: string;
  let n = 0;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-image-build-'));
    storageDir = join(work, 'storage');
    base = await busyboxLayout(work);
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  /** A request for a context holding `files`, FROM base meaning the busybox layout. */
  async function request(files: Record<string, string>, more: Partial<BuildRequest> = {}): Promise<BuildRequest> {
    const contextDir = join(work, `context-${++n}`);
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(contextDir, path, '..'), { recursive: true });
      await writeFile(join(contextDir, path), content);
    }
    await mkdir(contextDir, { recursive: true });
    const authFile = join(work, 'auth.json');
    await writeFile(authFile, '{"auths":{}}');
    return { contextDir, buildArgs: {}, baseImage: async (ref) => (ref === 'base' ? base : undefined), registries: { authFile }, storageDir, ...more };
  }

  const rejectsWith = (code: number, reason: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof MoatError, String(e));
    assert.equal(e.code, code, e.message);
    assert.equal(e.reason, reason, e.message);
    assert.match(e.message, message);
    return true;
  };

  test('a two-stage build on a Moat image gives a layout with its files and config; the steps are reported', async () => {
    const steps: BuildStep[] = [];
    const log: string[] = [];
    const dockerfile = [
      'FROM base AS build',
      'RUN echo built > /out.txt',
      'FROM base',
      'COPY --from=build /out.txt /app/out.txt',
      'ENV GREETING=hello',
      'WORKDIR /app',
      'USER 1000',
      'CMD ["cat", "/app/out.txt"]',
    ].join('\n');
    const r = await request({ Dockerfile: dockerfile }, { onStep: (s) => steps.push(s), onLog: (l) => log.push(l) });
    const built = await buildImage(r);
    try {
      const config = await imageConfig(built.layoutDir);
      assert.equal(config.config.User, '1000');
      assert.equal(config.config.WorkingDir, '/app');
      assert.deepEqual(config.config.Cmd, ['cat', '/app/out.txt']);
      assert.ok(config.config.Env.includes('GREETING=hello'), config.config.Env.join(' '));
      assert.ok(config.config.Env.includes('PATH=/bin'), 'the base image config is kept');

      const bundle = join(work, 'bundle');
      await run('umoci', ['unpack', '--image', `${built.layoutDir}:latest`, bundle]);
      assert.equal(await readFile(join(bundle, 'rootfs/app/out.txt'), 'utf8'), 'built\n');
      assert.equal((await stat(join(bundle, 'rootfs/app/out.txt'))).uid, 0, 'ids in the layout are the image ones, not the build range');
      await rm(bundle, { recursive: true, force: true });

      assert.deepEqual(
        steps.map((s) => `${s.step}/${s.total} ${s.instruction}`),
        [
          '1/2 FROM base AS build',
          '2/2 RUN echo built > /out.txt',
          '1/6 FROM base',
          '2/6 COPY --from=build /out.txt /app/out.txt',
          '3/6 ENV GREETING=hello',
          '4/6 WORKDIR /app',
          '5/6 USER 1000',
          '6/6 CMD ["cat", "/app/out.txt"]',
        ],
      );
      assert.ok(!log.some((l) => l.includes(storageDir) || l.includes(base)), 'no host path in the log');
    } finally {
      await built.cleanup();
    }
    await assert.rejects(stat(built.layoutDir), /ENOENT/);

    // The layer cache is kept: the same build again runs nothing.
    const again: string[] = [];
    const rebuilt = await buildImage({ ...(await request({ Dockerfile: dockerfile })), onLog: (l) => again.push(l) });
    await rebuilt.cleanup();
    assert.ok(again.filter((l) => l.startsWith('--> Using cache')).length >= 6, again.join('\n'));
  });

  test('a failing RUN fails the build with its step, instruction and exit status', async () => {
    const log: string[] = [];
    const r = await request({ Dockerfile: 'FROM base\nRUN echo one\nRUN echo about to fail && exit 3\nRUN echo never\n' }, { onLog: (l) => log.push(l) });
    await assert.rejects(buildImage(r), rejectsWith(422, 'BuildFailed', /^step 3\/4 \(RUN echo about to fail && exit 3\) failed: exit status 3/));
    assert.ok(log.includes('about to fail'), log.join('\n'));
    assert.ok(!log.includes('never'));
  });

  test('RUN is root in a user namespace, not the host root, and has no network', async () => {
    const log: string[] = [];
    const r = await request({ Dockerfile: 'FROM base\nRUN id -u && cat /proc/self/uid_map && cat /proc/net/dev\n' }, { onLog: (l) => log.push(l) });
    await (await buildImage(r)).cleanup();
    assert.ok(log.includes('0'), log.join('\n'));
    const map = log.map((l) => /^\s*0\s+(\d+)\s+(\d+)\s*$/.exec(l)).find(Boolean);
    assert.ok(map, log.join('\n'));
    assert.notEqual(map[1], '0', 'root in the step is not the host root');
    assert.ok(Number(map[2]) <= 65536, 'only a range of ids is mapped');
    const ifaces = log.filter((l) => /^\s*\w+:\s+\d/.test(l)).map((l) => l.trim().split(':')[0]);
    assert.deepEqual(ifaces, ['lo'], 'only loopback');
  });

  test('bad input is refused before buildah runs', async () => {
    const r = await request({ Dockerfile: 'FROM base\n' });
    await assert.rejects(buildImage({ ...r, dockerfile: '../x' }), rejectsWith(400, 'BadBuild', /inside the build context/));
    await assert.rejects(buildImage({ ...r, dockerfile: '/etc/passwd' }), rejectsWith(400, 'BadBuild', /inside the build context/));
    await symlink('/etc/passwd', join(r.contextDir, 'escape'));
    await assert.rejects(buildImage({ ...r, dockerfile: 'escape' }), rejectsWith(400, 'BadBuild', /inside the build context/));
    await assert.rejects(buildImage({ ...r, buildArgs: { 'bad-name': '1' } }), rejectsWith(400, 'BadBuild', /build arg name/));
    await assert.rejects(buildImage({ ...r, target: '-x' }), rejectsWith(400, 'BadBuild', /target/));
    await assert.rejects(buildImage({ ...r, target: 'nosuchstage' }), rejectsWith(400, 'BadBuild', /no stage named nosuchstage/));
    await assert.rejects(buildImage({ ...r, dockerfile: 'Missing' }), rejectsWith(422, 'BuildFailed', /no Missing in the build context/));
    for (const df of [
      'FROM oci:/etc:latest',
      'ARG T=oci\nFROM ${T}:/etc',
      'FROM base\nCOPY --from=dir:/etc /x /y',
      'FROM base\nRUN --mount=from=oci:/etc,target=/m ls',
    ])
      await assert.rejects(buildImage(await request({ Dockerfile: df })), rejectsWith(400, 'BadBuild', /transport|stage/), df);
    await assert.rejects(
      buildImage(await request({ Dockerfile: 'FROM base\nADD http://127.0.0.1/x /x\n' })),
      rejectsWith(400, 'BadBuild', /ADD from a URL is not supported/),
    );
  });

  test('a Dockerfile buildah cannot parse fails with its message', async () => {
    await assert.rejects(buildImage(await request({ Dockerfile: 'FORM base\n' })), rejectsWith(422, 'BuildFailed', /no FROM statement found/));
  });

  test('an unknown short name fails at once: no registry is searched', async () => {
    const started = Date.now();
    await assert.rejects(buildImage(await request({ Dockerfile: 'FROM nosuchimage\nRUN true\n' })), rejectsWith(422, 'BuildFailed', /nosuchimage/));
    const viaArg = { Dockerfile: 'ARG IMAGE=nosuchimage\nFROM ${IMAGE}\nRUN true\n' };
    await assert.rejects(buildImage(await request(viaArg)), rejectsWith(422, 'BuildFailed', /nosuchimage/));
    assert.ok(Date.now() - started < 10_000);
    // FROM is expanded as buildah expands it: a build arg can name the Moat image.
    await (await buildImage(await request(viaArg, { buildArgs: { IMAGE: 'base' } }))).cleanup();
  });

  test('an aborted build stops buildah and its step', async () => {
    const ac = new AbortController();
    const r = await request(
      { Dockerfile: 'FROM base\nRUN sleep 120\n' },
      { signal: ac.signal, onStep: (s) => s.step === 2 && setTimeout(() => ac.abort(), 500) },
    );
    const started = Date.now();
    await assert.rejects(buildImage(r), { name: 'AbortError' });
    assert.ok(Date.now() - started < 20_000);
    const left = await run('sh', ['-c', 'ps -eo args | grep -c "[s]leep 120"'], { allowFail: true });
    assert.equal(left.stdout.trim(), '0', 'the step process is gone');
  });
});

/** An OCI layout (ref latest) of one layer: the host's static busybox and its applets. */
async function busyboxLayout(work: string): Promise<string> {
  const stage = join(work, 'busybox');
  await mkdir(join(stage, 'bin'), { recursive: true });
  await mkdir(join(stage, 'tmp'), { recursive: true, mode: 0o1777 });
  await copyFile('/bin/busybox', join(stage, 'bin/busybox'));
  for (const applet of ['sh', 'echo', 'cat', 'id', 'ls', 'sleep', 'true', 'false']) await symlink('busybox', join(stage, 'bin', applet));
  const layout = join(work, 'base');
  await mkdir(join(layout, 'blobs/sha256'), { recursive: true });
  const layer = join(work, 'layer.tar');
  await run('tar', ['--numeric-owner', '--owner=0', '--group=0', '-cf', layer, '-C', stage, '.']);
  const blob = async (bytes: Buffer) => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    await writeFile(join(layout, 'blobs/sha256', hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layerBlob = await blob(await readFile(layer));
  const config = await blob(
    Buffer.from(
      JSON.stringify({
        architecture: process.arch === 'x64' ? 'amd64' : process.arch,
        os: 'linux',
        config: { Env: ['PATH=/bin'] },
        rootfs: { type: 'layers', diff_ids: [layerBlob.digest] },
        history: [{ created_by: 'busybox' }],
      }),
    ),
  );
  const manifest = await blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layerBlob }],
      }),
    ),
  );
  const index = {
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
  };
  await writeFile(join(layout, 'index.json'), JSON.stringify(index));
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return layout;
}

/** index.json → manifest → config of a layout's `latest`. */
async function imageConfig(layout: string) {
  const blob = async (digest: string) => JSON.parse(await readFile(join(layout, 'blobs/sha256', digest.slice(7)), 'utf8'));
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
  const entry = index.manifests.find((m: { annotations?: Record<string, string> }) => m.annotations?.['org.opencontainers.image.ref.name'] === 'latest');
  const manifest = await blob(entry.digest);
  return (await blob(manifest.config.digest)) as { config: { User?: string; WorkingDir?: string; Cmd?: string[]; Env: string[] } };
}
