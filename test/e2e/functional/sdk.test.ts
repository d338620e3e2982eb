import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Moat, MoatError, type Sandbox } from '@moat/sdk';
import { startTestServer, type TestServer } from '../../helpers/server.js';

describe('TypeScript SDK against a real server', () => {
  let server: TestServer;
  let moat: Moat;
  let sbx: Sandbox;
  before(async () => {
    server = await startTestServer();
    moat = new Moat({ url: server.url, apiKey: server.adminKey });
    sbx = await moat.sandboxes.create({ image: 'base' });
  });
  after(() => server.close());

  test('create waits for Ready and generates a name', async () => {
    assert.match(sbx.name, /^sbx-[a-z0-9]{5}$/);
    assert.equal(sbx.resource.status?.phase, 'Running');
  });

  test('exec returns stdout, stderr and exitCode', async () => {
    const r = await sbx.exec('ls /; echo oops >&2; exit 2');
    assert.match(r.stdout, /\busr\b/);
    assert.equal(r.stderr, 'oops\n');
    assert.equal(r.exitCode, 2);
  });

  test('streaming exec calls back as output arrives and takes stdin', async () => {
    const chunks: string[] = [];
    const r = await sbx.exec(['python3', '-u', '-c', 'import sys,time\nfor i in range(3): print(i); time.sleep(0.1)\nprint(sys.stdin.read())'], {
      stdin: 'in',
      onStdout: (s: string) => chunks.push(s),
    });
    assert.equal(r.stdout, '0\n1\n2\nin\n');
    assert.ok(chunks.length >= 2, `output arrived in ${chunks.length} chunks`);
  });

  test('spawn: interactive process over the WebSocket', async () => {
    const proc = sbx.spawn(['cat']);
    proc.write('hello ');
    proc.write('world');
    proc.end();
    const r = await proc.wait();
    assert.equal(r.stdout, 'hello world');
    assert.equal(r.exitCode, 0);
    const tty = sbx.spawn(['sh', '-c', 'tty; stty size'], { tty: true, rows: 33, cols: 77 });
    const t = await tty.wait();
    assert.match(t.stdout, /\/dev\/pts\/\d+/);
    assert.match(t.stdout, /33 77/);
  });

  test('files: write, read, list, mkdir, remove', async () => {
    await sbx.files.mkdir('/workspace/dir');
    await sbx.files.write('/workspace/dir/a.txt', 'A');
    await sbx.files.write('/workspace/dir/b.bin', Buffer.from([1, 2, 3]));
    assert.equal(await sbx.files.readText('/workspace/dir/a.txt'), 'A');
    assert.deepEqual([...(await sbx.files.read('/workspace/dir/b.bin'))], [1, 2, 3]);
    assert.deepEqual(
      (await sbx.files.list('/workspace/dir')).map((e) => e.name),
      ['a.txt', 'b.bin'],
    );
    await sbx.files.remove('/workspace/dir', { recursive: true });
    assert.equal(await sbx.files.exists('/workspace/dir'), false);
  });

  test('errors are MoatErrors with status and reason', async () => {
    await assert.rejects(moat.sandboxes.get('nope'), (e: unknown) => e instanceof MoatError && e.status === 404 && e.reason === 'NotFound');
    await assert.rejects(
      moat.sandboxes.create({ image: 'nosuch' }),
      (e: unknown) => e instanceof MoatError && e.status === 404 && /known images/.test(e.message),
    );
    await assert.rejects(sbx.files.read('/no/such'), (e: unknown) => e instanceof MoatError && e.status === 404);
  });

  test('delete removes it', async () => {
    await sbx.delete();
    await assert.rejects(moat.sandboxes.get(sbx.name), (e: unknown) => e instanceof MoatError && e.status === 404);
  });

  test('create({ template }) claims from a warm pool when one exists, and delete removes the claim', async () => {
    await moat.templates.create({
      metadata: { name: 'sdk-tpl' },
      spec: { podTemplate: { spec: { containers: [{ image: 'base' }] } }, envVarsInjectionPolicy: 'Allowed' },
    });
    await moat.warmPools.create({ metadata: { name: 'sdk-pool' }, spec: { replicas: 1, sandboxTemplateRef: { name: 'sdk-tpl' } } });
    await moat.warmPools.wait('sdk-pool', { timeoutSeconds: 60 });
    const s = await moat.sandboxes.create({ template: 'sdk-tpl', env: { GREETING: 'hi' } });
    assert.match(s.name, /^sdk-tpl-/);
    assert.equal(s.resource.metadata.annotations?.['moat.dev/adopted-from-pool'], 'sdk-pool');
    assert.equal((await s.exec('echo $GREETING $(hostname)')).stdout, `hi ${s.name}\n`);
    await s.delete();
    await assert.rejects(moat.claims.get(s.name), (err: unknown) => err instanceof MoatError && err.status === 404);
    await assert.rejects(moat.sandboxes.get(s.name), (err: unknown) => err instanceof MoatError && err.status === 404);
    await moat.warmPools.delete('sdk-pool');

    const cold = await moat.sandboxes.create({ template: 'base', name: 'sdk-cold' });
    assert.equal(cold.resource.status?.phase, 'Running');
    await moat.sandboxes.delete('sdk-cold');
    await assert.rejects(moat.claims.get('sdk-cold'), (err: unknown) => err instanceof MoatError && err.status === 404);

    await assert.rejects(
      moat.sandboxes.create({ template: 'no-such-template' }),
      (err: unknown) => err instanceof MoatError && err.reason === 'TemplateNotFound' && /no-such-template/.test(err.message),
    );
  });
});
