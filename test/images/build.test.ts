import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat, type ImageProgress } from '@moat/sdk';
import { run } from '@moat/runtime';
import { runProcess } from '../helpers/run-process.js';
import { NS, createReady, sh, startTestServer, type TestServer } from '../helpers/server.js';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/main.js');

/**
 * Dockerfile builds through the API, with the real builder (buildah):
 * FROM a Moat image, two stages, steps and log streamed, and a failing step
 * reported as the step it was.
 */
describe('images built from a Dockerfile', () => {
  let server: TestServer;
  let moat: Moat;
  let work: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-build-'));
    server = await startTestServer();
    moat = new Moat({ url: server.url, apiKey: server.adminKey });
  });
  after(async () => {
    await server?.close();
    await rm(work, { recursive: true, force: true });
  });

  /** The CLI as a user runs it against this server. */
  function cliAt(config: string) {
    return (...args: string[]) =>
      runProcess(process.execPath, [CLI, ...args], {
        env: { ...(process.env as Record<string, string>), MOAT_URL: server.url, MOAT_API_KEY: server.adminKey, MOAT_CONFIG: config },
        cwd: work,
      });
  }

  /** The directory as a tar, as `moat images build` sends it. */
  async function context(name: string, files: Record<string, string>): Promise<Uint8Array> {
    const dir = join(work, name);
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), content);
    }
    await run('tar', ['-cf', `${dir}.tar`, '-C', dir, '.']);
    return new Uint8Array(await readFile(`${dir}.tar`));
  }

  test('a two-stage build on a Moat image runs as a sandbox', async () => {
    const events: ImageProgress[] = [];
    const tar = await context('two-stage', {
      Dockerfile: [
        'FROM base AS build',
        'RUN echo "built in a user namespace as $(id -u), map: $(awk \'{print $2}\' /proc/self/uid_map)" > /out.txt',
        'FROM base',
        'COPY --from=build /out.txt /app/out.txt',
        'COPY app.py /app/app.py',
        'ENV GREETING=built',
        'WORKDIR /app',
        'CMD ["sleep", "infinity"]',
      ].join('\n'),
      'app.py': 'print("hi")\n',
    });
    const image = await moat.images.build(tar, { tag: 'built-app:v1', onProgress: (p) => events.push(p) });
    assert.equal(image.name, 'built-app:v1');
    assert.equal(image.source, 'build');
    assert.equal(image.config.WorkingDir, '/app');
    const steps = events.filter((e) => e.type === 'step') as { instruction?: string }[];
    assert.ok(
      steps.some((s) => s.instruction?.startsWith('COPY --from=build')),
      JSON.stringify(steps),
    );
    assert.ok(events.some((e) => e.type === 'log'));
    await createReady(server, 'built', { image: 'built-app:v1' });
    const r = await sh(server, 'built', 'cat /app/out.txt; cat app.py; echo $GREETING');
    assert.equal(r.exit?.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^built in a user namespace as 0, map: \d+\nprint\("hi"\)\nbuilt\n$/);
    assert.notEqual(/map: (\d+)/.exec(r.stdout)?.[1], '0', 'RUN steps are not the host root');
    await server.api(`${NS}/built`, { method: 'DELETE' });
  });

  test('a failing step fails the build with the step, and the log says why', async () => {
    const lines: string[] = [];
    const tar = await context('fails', { Dockerfile: 'FROM base\nRUN echo one\nRUN echo about to fail && exit 3\nRUN echo never\n' });
    await assert.rejects(
      moat.images.build(tar, { tag: 'fails:v1', onProgress: (p) => p.type === 'log' && lines.push((p as { line: string }).line) }),
      (e: Error & { code?: number; reason?: string }) => {
        assert.equal(e.reason, 'BuildFailed', e.message);
        assert.match(e.message, /step 3\/4 \(RUN echo about to fail && exit 3\) failed/);
        return true;
      },
    );
    assert.ok(lines.includes('about to fail'), lines.join('\n'));
    await assert.rejects(moat.images.get('fails:v1'), (e: Error & { code?: number }) => e.code === 404);
  });

  test('the CLI: moat images build, list, inspect, delete', async () => {
    const dir = join(work, 'cli');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'Dockerfile'), 'FROM base\nRUN echo cli > /cli.txt\nUSER 1000\n');
    const cli = cliAt(join(work, 'cli-config.json'));
    const built = await cli('images', 'build', '-t', 'cli-app:v1', dir);
    assert.equal(built.code, 0, built.stderr);
    assert.match(built.stdout, /^cli-app:v1 sha256:[0-9a-f]{64}\n$/);
    assert.match(built.stderr, /STEP 2\/3: RUN echo cli/, 'the build log streams to stderr');
    const listed = await cli('images', 'list');
    assert.match(listed.stdout, /^cli-app:v1\s+sha256:[0-9a-f]{12}\s+build\s/m);
    const inspected = JSON.parse((await cli('images', 'inspect', 'cli-app:v1')).stdout) as { config: { User?: string } };
    assert.equal(inspected.config.User, '1000');
    assert.equal((await cli('images', 'delete', 'cli-app:v1')).code, 0);
    const again = await cli('images', 'delete', 'cli-app:v1');
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /image "cli-app:v1" not found/);
  });

  test("the tutorial's python-runtime, built from its Dockerfile, serves /execute on its EXPOSEd port", async () => {
    const cli = cliAt(join(work, 'runtime-config.json'));
    const built = await cli('images', 'build', '-t', 'python-runtime:v1', join(import.meta.dirname, '../../examples/python-runtime'));
    assert.equal(built.code, 0, built.stderr);
    // No command: the image's CMD is the server.
    const s = await createReady(server, 'runtime', { image: 'python-runtime:v1' });
    assert.deepEqual((s.status as { image: { ports?: number[] } }).image.ports, [8888]);
    const wide = await cli('sandbox', 'list', '-o', 'wide');
    assert.match(wide.stdout, /^runtime\s.*\s8888\/tcp$/m);
    const base = `${NS}/runtime/ports/8888`;
    let health: Response | undefined;
    for (let i = 0; i < 100 && health?.status !== 200; i++) {
      if (i) await new Promise((r) => setTimeout(r, 100));
      health = await server.api(`${base}/`);
    }
    assert.equal(health?.status, 200);
    assert.equal(((await health!.json()) as { status: string }).status, 'ok');
    const ran = await server.api(`${base}/execute`, { method: 'POST', json: { command: "sh -c 'echo hello world; pwd'" } });
    assert.deepEqual(await ran.json(), { stdout: 'hello world\n/workspace\n', stderr: '', exit_code: 0 });
    await server.api(`${NS}/runtime`, { method: 'DELETE' });
  });

  test('bad build input is refused before anything runs', async () => {
    const tar = await context('bad', { Dockerfile: 'FROM base\n' });
    const cases: [Parameters<Moat['images']['build']>[1], number, RegExp][] = [
      [{ tag: 'x:v1', dockerfile: '../Dockerfile' }, 400, /inside the build context/],
      [{ tag: 'x:v1', buildArgs: { 'bad-name': '1' } }, 400, /build arg name/],
      [{ tag: 'x:v1', dockerfile: 'Missing' }, 422, /no Missing/],
    ];
    for (const [o, code, message] of cases) {
      await assert.rejects(moat.images.build(tar, o), (e: Error & { code?: number }) => {
        assert.equal(e.code, code, e.message);
        assert.match(e.message, message);
        return true;
      });
    }
    const noHub = await context('short-name', { Dockerfile: 'FROM nosuchimage\n' });
    await assert.rejects(moat.images.build(noHub, { tag: 'y:v1' }), (e: Error & { code?: number }) => e.code === 422 && /nosuchimage/.test(e.message));
  });
});
