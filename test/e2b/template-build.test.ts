// The published `e2b` SDK's template builds (Template.build), unchanged, against a Moat server on loopback.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BuildError, Sandbox, Template, waitForFile, type LogEntry } from 'e2b';
import { startTestServer, type TestServer } from '../helpers/server.js';

describe('e2b template builds against Moat', () => {
  let server: TestServer;
  let work: string;
  const sandboxes: Sandbox[] = [];
  // Unique content, so its files hash is new: test servers share an image store, which keeps uploads.
  const app = `print("hi ${randomUUID()}")\n`;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-e2b-template-'));
    await writeFile(join(work, 'app.py'), app);
    await mkdir(join(work, 'lib', 'sub'), { recursive: true });
    await writeFile(join(work, 'lib', 'sub', 'util.txt'), 'util\n');
    server = await startTestServer();
    process.env.E2B_API_KEY = server.adminKey;
    process.env.E2B_API_URL = server.url;
    process.env.E2B_SANDBOX_URL = server.url;
  });
  after(async () => {
    await Promise.all(sandboxes.map((s) => s.kill().catch(() => {})));
    await server?.close();
    await rm(work, { recursive: true, force: true });
  });

  const appTemplate = () =>
    Template({ fileContextPath: work })
      .fromImage('base')
      .copy('app.py', '/app/app.py')
      .copy('lib', '/app/lib')
      .runCmd('echo built > /app/built.txt')
      .setEnvs({ GREETING: 'hi', PRICE: '$5 "net"' })
      .setWorkdir('/app');

  test('a template from base with COPY, RUN, ENV and WORKDIR builds, streams its log and starts sandboxes', async () => {
    const logs: LogEntry[] = [];
    const built = await Template.build(appTemplate(), { alias: 'my-template', onBuildLogs: (e) => void logs.push(e) });
    assert.equal(built.templateId, 'my-template');
    const text = logs.map((e) => e.message);
    assert.ok(text.includes("Uploaded 'app.py'"), text.join('\n'));
    assert.ok(
      text.some((m) => /STEP \d+\/\d+: RUN echo built > \/app\/built.txt/.test(m)),
      `the builder's steps reach onBuildLogs:\n${text.join('\n')}`,
    );
    assert.ok(await Template.exists('my-template'));
    assert.equal(await Template.exists('no-such-template'), false);

    const sbx = await Sandbox.create('my-template');
    sandboxes.push(sbx);
    const r = await sbx.commands.run('cat /app/built.txt; cat /app/app.py; echo $GREETING; pwd');
    assert.equal(r.stdout, `built\n${app}hi\n/app\n`);
    const more = await sbx.commands.run('cat lib/sub/util.txt; echo "$PRICE"');
    assert.equal(more.stdout, 'util\n$5 "net"\n');
  });

  test('a rebuild finds the uploaded files already here', async () => {
    const logs: string[] = [];
    await Template.build(appTemplate(), { alias: 'my-template', onBuildLogs: (e) => void logs.push(e.message) });
    assert.ok(logs.includes("Skipping upload of 'app.py', already cached"), logs.join('\n'));
    assert.ok(logs.includes("Skipping upload of 'lib', already cached"), logs.join('\n'));
  });

  test('a template from another template keeps its files; its start command runs and its ready command gates the sandbox', async () => {
    const child = Template()
      .fromTemplate('my-template')
      .runCmd('whoami > /home/user/built-by', { user: 'user' })
      // Back to root after a step as another user: /app is root's.
      .runCmd('echo child > /app/child.txt')
      .setStartCmd('sleep 2; echo started > /tmp/started; exec sleep infinity', waitForFile('/tmp/started'));
    await Template.build(child, { alias: 'child-template' });
    const sbx = await Sandbox.create('child-template');
    sandboxes.push(sbx);
    const r = await sbx.commands.run('cat /app/built.txt /app/child.txt /home/user/built-by /tmp/started; echo $GREETING');
    assert.equal(r.stdout, 'built\nchild\nuser\nstarted\nhi\n');
  });

  test('a failing step rejects the build with an error naming the step, after its log', async () => {
    const logs: string[] = [];
    const failing = Template().fromImage('base').runCmd('echo about to fail; exit 3');
    await assert.rejects(Template.build(failing, { alias: 'failing-template', onBuildLogs: (e) => void logs.push(e.message) }), (err: unknown) => {
      assert.ok(err instanceof BuildError, String(err));
      assert.match(err.message, /step 2\/2 \(RUN echo about to fail; exit 3\) failed/);
      return true;
    });
    assert.ok(
      logs.some((m) => m.includes('about to fail')),
      logs.join('\n'),
    );
    assert.equal(await Template.exists('failing-template'), false);
  });

  test('what Moat cannot build is refused before the build starts', async () => {
    await assert.rejects(Template.build(Template().fromTemplate('no-such-template'), { alias: 'child' }), /no sandbox template "no-such-template"/);
    await assert.rejects(
      Template.build(Template().fromImage('base', { username: 'u', password: 'p' }), { alias: 'child' }),
      /registry credentials are not taken/,
    );
    // A name Moat's own templates have is not overwritten.
    await assert.rejects(Template.build(Template().fromImage('base'), { alias: 'base' }), /was not made by an E2B template build/);
  });

  test('an upload link works once, with the token alone', async () => {
    const hash = 'a'.repeat(64);
    const link = (await (await fetch(`${server.url}/templates/t/files/${hash}`, { headers: { 'x-api-key': server.adminKey } })).json()) as {
      present: boolean;
      url: string;
    };
    assert.equal(link.present, false);
    assert.ok(link.url.startsWith(`${server.url}/`), link.url);
    const notTar = await fetch(link.url, { method: 'PUT', body: 'not a tar' });
    assert.equal(notTar.status, 400);
    const again = await fetch(link.url, { method: 'PUT', body: 'not a tar' });
    assert.equal(again.status, 404);
    const guessed = await fetch(`${server.url}/e2b/template-files/${'x'.repeat(43)}`, { method: 'PUT', body: 'x' });
    assert.equal(guessed.status, 404);
  });
});
