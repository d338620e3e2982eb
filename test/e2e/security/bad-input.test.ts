import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { NS, createReady, execApi, sandboxBody, sh, startTestServer, type TestServer } from '../../helpers/server.js';

describe('bad input gets a clear 4xx and loses nothing', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ maxUploadBytes: 1024 * 1024 });
    await createReady(server, 'target');
  });
  after(() => server.close());

  const status = async (res: Response, code: number, reason?: RegExp) => {
    const body = (await res.json()) as any;
    assert.equal(res.status, code, JSON.stringify(body));
    assert.equal(body.kind, 'Status');
    assert.equal(body.code, code);
    if (reason) assert.match(body.message, reason);
    return body;
  };

  test('missing and invalid API keys are 401', async () => {
    await status(await fetch(server.url + NS), 401, /missing API key/);
    await status(await fetch(server.url + NS, { headers: { authorization: 'Bearer moat_nope' } }), 401, /invalid API key/);
    assert.equal((await fetch(server.url + '/healthz')).status, 200, 'health needs no key');
  });

  test('an unknown image is 404 and lists the known images', async () => {
    const body = await status(
      await server.api(NS, { method: 'POST', json: sandboxBody('x1', { image: 'nosuch' }) }),
      404,
      /image "nosuch:latest" not found in namespace "default"; known images: .*base/,
    );
    assert.ok(body.details.known.includes('base'));
  });

  test('an invalid name is 400', async () => {
    await status(await server.api(NS, { method: 'POST', json: sandboxBody('Bad_Name') }), 400, /DNS-1123/);
    await status(await server.api(NS, { method: 'POST', json: sandboxBody('x'.repeat(64)) }), 400, /DNS-1123/);
  });

  test('unknown fields are 400, at any depth', async () => {
    const top = { ...sandboxBody('x2'), extra: 1 };
    await status(await server.api(NS, { method: 'POST', json: top }), 400, /extra/);
    const deep = sandboxBody('x3') as any;
    deep.spec.podTemplate.spec.containers[0].privileged = true;
    await status(await server.api(NS, { method: 'POST', json: deep }), 400, /privileged/);
    await status(await server.api(`${NS}/target/exec`, { method: 'POST', json: { command: ['true'], shell: true } }), 400, /shell/);
  });

  test('malformed JSON is 400', async () => {
    await status(await server.api(NS, { method: 'POST', body: '{"metadata": ', headers: { 'content-type': 'application/json' } }), 400, /JSON/);
  });

  test('a DELETE with content-type application/json and no body is a DELETE, as Kubernetes clients send it', async () => {
    await status(await server.api(`${NS}/no-such-sandbox`, { method: 'DELETE', headers: { 'content-type': 'application/json' } }), 404, /not found/);
    await status(await server.api(NS, { method: 'POST', body: '', headers: { 'content-type': 'application/json' } }), 400, /body/i);
  });

  test('bad quantities and unknown runtimes are 422', async () => {
    await status(await server.api(NS, { method: 'POST', json: sandboxBody('x4', { limits: { memory: 'lots' } }) }), 422, /memory/);
    await status(await server.api(NS, { method: 'POST', json: sandboxBody('x5', { limits: { memory: '1Ki' } }) }), 422, /outside the allowed range/);
    const rt = sandboxBody('x6') as any;
    rt.spec.podTemplate.spec.runtimeClassName = 'docker';
    await status(await server.api(NS, { method: 'POST', json: rt }), 422, /unknown runtime "docker"/);
  });

  test('a duplicate name is 409 and the original is untouched', async () => {
    await status(await server.api(NS, { method: 'POST', json: sandboxBody('target') }), 409, /already exists/);
    assert.equal((await sh(server, 'target', 'echo ok')).stdout, 'ok\n');
  });

  test('paths that are relative or contain .. are 400 and touch nothing', async () => {
    for (const p of ['etc/passwd', '/../../etc/passwd', '/tmp/../../etc/shadow', '']) {
      await status(await server.api(`${NS}/target/files/content?path=${encodeURIComponent(p)}`), 400);
      await status(
        await server.api(`${NS}/target/files/content?path=${encodeURIComponent(p)}`, {
          method: 'PUT',
          body: 'x',
          headers: { 'content-type': 'application/octet-stream' },
        }),
        400,
      );
    }
  });

  test('host paths and symlinks pointing outside resolve inside the sandbox', async () => {
    const marker = join(server.dataDir, 'host-marker');
    await writeFile(marker, 'host-secret');
    // The server's data dir does not exist inside the sandbox.
    await status(await server.api(`${NS}/target/files/content?path=${encodeURIComponent(marker)}`), 404);
    // A symlink to the host path, and through it a write: lands in the sandbox, the host file is unchanged.
    await sh(server, 'target', `ln -s ${marker} /link && ln -s / /rootlink`);
    const res = await server.api(`${NS}/target/files/content?path=/link`, {
      method: 'PUT',
      body: 'overwritten',
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.ok(res.status < 500);
    assert.equal(await readFile(marker, 'utf8'), 'host-secret');
    const viaRoot = await server.api(`${NS}/target/files/content?path=${encodeURIComponent('/rootlink' + marker)}`);
    assert.notEqual(await viaRoot.text(), 'host-secret');
  });

  test('an upload over the limit is 413 and the old file survives', async () => {
    await sh(server, 'target', 'echo original > /keep.txt');
    const big = Buffer.alloc(2 * 1024 * 1024, 1);
    await status(
      await server.api(`${NS}/target/files/content?path=/keep.txt`, { method: 'PUT', body: big, headers: { 'content-type': 'application/octet-stream' } }),
      413,
    );
    // Without content-length (chunked), the limit still holds.
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(512 * 1024));
        c.close();
      },
    });
    const res = await server.api(`${NS}/target/files/content?path=/keep.txt`, {
      method: 'PUT',
      body: stream,
      headers: { 'content-type': 'application/octet-stream' },
      duplex: 'half',
    } as RequestInit);
    assert.equal(res.status, 413);
    assert.equal((await sh(server, 'target', 'cat /keep.txt; ls -a / | grep -c moat-upload || true')).stdout, 'original\n0\n');
  });

  test('a tar entry escaping its directory is 400', async () => {
    const { default: tar } = await import('tar-stream');
    const pack = tar.pack();
    pack.entry({ name: '../escape.txt' }, 'x');
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack) chunks.push(c as Buffer);
    await status(
      await server.api(`${NS}/target/files/archive?path=/up`, { method: 'PUT', body: Buffer.concat(chunks), headers: { 'content-type': 'application/x-tar' } }),
      400,
      /\.\./,
    );
    assert.equal((await sh(server, 'target', 'test -e /escape.txt; echo $?')).stdout, '1\n');
  });

  test('unknown sandboxes and routes are 404; the server keeps serving', async () => {
    await status(await server.api(`${NS}/nope`), 404, /not found/);
    assert.equal((await execApi(server, 'nope', { command: ['true'] })).status, 404);
    await status(await server.api('/no/such/route'), 404, /no route/);
    assert.equal((await fetch(server.url + '/healthz')).status, 200);
  });

  test('the OpenAPI document describes the API', async () => {
    const doc = (await (await fetch(server.url + '/openapi.json')).json()) as any;
    assert.equal(doc.openapi.slice(0, 2), '3.');
    assert.ok(doc.paths['/apis/agents.x-k8s.io/v1alpha1/namespaces/{namespace}/sandboxes']);
    assert.ok(doc.paths['/apis/agents.x-k8s.io/v1alpha1/namespaces/{namespace}/sandboxes/{name}/exec']);
  });
});
