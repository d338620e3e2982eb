import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ExecError, Moat, MoatError, type SandboxResource } from '../src/index.js';

interface Seen {
  method: string;
  url: URL;
  headers: Headers;
  body: string;
}

/** A fetch that answers from a handler and records what the SDK sent. */
function fakeFetch(handler: (req: Seen) => Response | Promise<Response>) {
  const seen: Seen[] = [];
  const impl: typeof fetch = async (input, init) => {
    const req: Seen = {
      method: init?.method ?? 'GET',
      url: new URL(String(input)),
      headers: new Headers(init?.headers),
      body: init?.body === undefined ? '' : Buffer.from(init.body as string | Uint8Array).toString('utf8'),
    };
    seen.push(req);
    return handler(req);
  };
  return { impl, seen };
}

const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });

function sandbox(name: string, phase: 'Pending' | 'Running' = 'Running'): SandboxResource {
  return {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name, namespace: 'default', creationTimestamp: new Date().toISOString() },
    spec: { podTemplate: { spec: { containers: [{ name: 'sandbox', image: 'base' }] } } },
    status: { phase, conditions: [] },
  };
}

/** An NDJSON response delivered in awkward chunks, as a real network would. */
function ndjson(events: unknown[]): Response {
  const text = events.map((e) => JSON.stringify(e) + '\n').join('');
  const bytes = new TextEncoder().encode(text);
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < bytes.length; i += 7) c.enqueue(bytes.subarray(i, i + 7));
      c.close();
    },
  });
  return new Response(stream, { status: 200, headers: { 'content-type': 'application/x-ndjson' } });
}

const base = '/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes';
const b64 = (s: string) => Buffer.from(s).toString('base64');

test('create posts a Sandbox manifest with auth, then waits for Ready', async () => {
  const { impl, seen } = fakeFetch((req) => {
    if (req.method === 'POST') return json(201, sandbox('sbx-abcde', 'Pending'));
    return json(200, sandbox('sbx-abcde'));
  });
  const moat = new Moat({ url: 'http://moat.test/', apiKey: 'secret', fetch: impl });
  const sbx = await moat.sandboxes.create({
    image: 'python',
    runtime: 'gvisor',
    env: { A: '1' },
    labels: { team: 'x' },
    resources: { cpu: '500m', memory: '1Gi', pids: 64 },
    timeoutSeconds: 5,
  });
  assert.equal(sbx.name, 'sbx-abcde');
  assert.equal(sbx.resource.status?.phase, 'Running');
  assert.equal(seen[0].url.pathname, base);
  assert.equal(seen[0].headers.get('authorization'), 'Bearer secret');
  assert.deepEqual(JSON.parse(seen[0].body), {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { generateName: 'sbx-', labels: { team: 'x' } },
    spec: {
      podTemplate: {
        spec: {
          runtimeClassName: 'gvisor',
          containers: [
            {
              name: 'sandbox',
              image: 'python',
              env: [{ name: 'A', value: '1' }],
              resources: { limits: { cpu: '500m', memory: '1Gi', 'moat.dev/pids': '64' } },
            },
          ],
        },
      },
    },
  });
  assert.equal(seen[1].url.pathname, `${base}/sbx-abcde/wait`);
  assert.equal(seen[1].url.searchParams.get('condition'), 'Ready');
  assert.equal(seen[1].url.searchParams.get('timeoutSeconds'), '5');
});

test('create with wait:false does not wait; template with image is refused clearly', async () => {
  const { impl, seen } = fakeFetch(() => json(201, sandbox('a', 'Pending')));
  const moat = new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl });
  await moat.sandboxes.create({ name: 'a', wait: false });
  assert.equal(seen.length, 1);
  await assert.rejects(
    moat.sandboxes.create({ template: 't', image: 'base' }),
    (err: unknown) => err instanceof MoatError && /image cannot be combined with template "t"/.test(err.message),
  );
  assert.equal(seen.length, 1, 'nothing was sent');
});

test('server errors surface as MoatError with the Status fields', async () => {
  const { impl } = fakeFetch(() =>
    json(409, { kind: 'Status', code: 409, reason: 'AlreadyExists', message: 'sandbox "a" already exists', details: { name: 'a' } }),
  );
  const moat = new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl });
  await assert.rejects(moat.sandboxes.create({ name: 'a' }), (err: unknown) => {
    assert.ok(err instanceof MoatError);
    assert.equal(err.status, 409);
    assert.equal(err.reason, 'AlreadyExists');
    assert.equal(err.message, 'sandbox "a" already exists');
    return true;
  });
});

test('wait retries when the server times out early, within the caller deadline', async () => {
  let calls = 0;
  const { impl } = fakeFetch(() => (++calls === 1 ? json(408, { kind: 'Status', reason: 'Timeout', message: 'slow' }) : json(200, sandbox('a'))));
  const moat = new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl });
  const got = await moat.sandboxes.client.wait('a', { timeoutSeconds: 10 });
  assert.equal(got.metadata.name, 'a');
  assert.equal(calls, 2);
});

test('exec streams output to callbacks and collects the result', async () => {
  const { impl, seen } = fakeFetch((req) => {
    if (req.url.pathname.endsWith('/exec'))
      return ndjson([
        { type: 'started', pid: 12 },
        { type: 'stdout', data: b64('hello é') },
        { type: 'stderr', data: b64('warn\n') },
        { type: 'stdout', data: b64(' world\n') },
        { type: 'exit', exitCode: 3, signal: null, timedOut: false, durationMs: 4.5 },
      ]);
    return json(200, sandbox('a'));
  });
  const moat = new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl });
  const sbx = await moat.sandboxes.get('a');
  const out: string[] = [];
  const res = await sbx.exec('echo hi', { env: { K: 'V' }, cwd: '/tmp', stdin: 'in', timeoutSeconds: 9, onStdout: (s) => out.push(s) });
  assert.deepEqual(res, { stdout: 'hello é world\n', stderr: 'warn\n', exitCode: 3, signal: null, timedOut: false, durationMs: 4.5 });
  assert.equal(out.join(''), 'hello é world\n');
  assert.deepEqual(JSON.parse(seen[1].body), { command: ['/bin/sh', '-c', 'echo hi'], env: { K: 'V' }, cwd: '/tmp', stdin: 'in', timeoutSeconds: 9 });
});

test('exec of a missing program rejects with ExecError', async () => {
  const { impl } = fakeFetch((req) =>
    req.url.pathname.endsWith('/exec') ? ndjson([{ type: 'error', reason: 'NotFound', message: 'nope: no such file' }]) : json(200, sandbox('a')),
  );
  const sbx = await new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl }).sandboxes.get('a');
  await assert.rejects(sbx.exec(['nope']), (err: unknown) => err instanceof ExecError && err.reason === 'NotFound');
});

test('an exec stream cut short is reported, not mistaken for success', async () => {
  const { impl } = fakeFetch((req) => (req.url.pathname.endsWith('/exec') ? ndjson([{ type: 'started', pid: 1 }]) : json(200, sandbox('a'))));
  const sbx = await new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl }).sandboxes.get('a');
  await assert.rejects(sbx.exec(['true']), /ended before the command exited/);
});

test('binary exec stdin travels as base64', async () => {
  const { impl, seen } = fakeFetch((req) =>
    req.url.pathname.endsWith('/exec')
      ? ndjson([
          { type: 'started', pid: 1 },
          { type: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 },
        ])
      : json(200, sandbox('a')),
  );
  const sbx = await new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl }).sandboxes.get('a');
  await sbx.exec(['cat'], { stdin: Buffer.from([0xff, 0xfe]) });
  assert.equal(JSON.parse(seen[1].body).stdinBase64, '//4=');
});

test('files: query parameters, raw bodies and exists()', async () => {
  const { impl, seen } = fakeFetch((req) => {
    const p = req.url.pathname;
    if (p.endsWith('/files/stat')) return json(404, { kind: 'Status', reason: 'NotFound', message: 'no such file' });
    if (p.endsWith('/files/content') && req.method === 'GET') return new Response(Buffer.from([0, 1, 2]));
    if (p.endsWith('/files/content')) return json(200, { name: 'x', path: '/x', type: 'file', size: 3, mode: '0755', mtime: '', uid: 0, gid: 0 });
    if (p.endsWith('/files/list')) return json(200, { items: [{ name: 'x' }] });
    if (p.endsWith('/files') && req.method === 'DELETE') return new Response(null, { status: 204 });
    return json(200, sandbox('a'));
  });
  const sbx = await new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: impl }).sandboxes.get('a');
  assert.deepEqual([...(await sbx.files.read('/x'))], [0, 1, 2]);
  await sbx.files.write('/x', 'abc', { mode: 0o755 });
  const put = seen.at(-1)!;
  assert.equal(put.method, 'PUT');
  assert.equal(put.url.searchParams.get('path'), '/x');
  assert.equal(put.url.searchParams.get('mode'), '0755');
  assert.equal(put.body, 'abc');
  assert.equal(await sbx.files.exists('/nope'), false);
  assert.equal((await sbx.files.list('/'))[0].name, 'x');
  await sbx.files.remove('/x', { recursive: true });
  assert.equal(seen.at(-1)!.url.searchParams.get('recursive'), 'true');
});
