import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import tar from 'tar-stream';
import { NOT_CONFIGURED } from '../src/index.js';
import { packDirectory } from '../src/tar.js';
import { b64, fakeServer, ndjson, run, SBX, sandbox, status } from './helpers.js';

const closers: (() => Promise<unknown>)[] = [];
after(() => Promise.all(closers.map((c) => c())));

async function server(handler: Parameters<typeof fakeServer>[0]) {
  const s = await fakeServer(handler);
  closers.push(s.close);
  return { ...s, env: { MOAT_URL: s.url, MOAT_API_KEY: 'test-key' } };
}

test('without a server configured every command says how to get one', async () => {
  const r = await run(['sandbox', 'list']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `error: ${NOT_CONFIGURED}\n`);
  assert.equal(NOT_CONFIGURED, 'no Moat server configured: run `moat up` or set MOAT_URL and MOAT_API_KEY');
});

test('config view shows where settings come from, never the key', async () => {
  const key = 'moat_secret_0123456789abcdefghij';
  const r = await run(['config', 'view', '-o', 'json'], { env: { MOAT_URL: 'http://h:1', MOAT_API_KEY: key, MOAT_CONFIG: '/cfg/moat.json' } });
  assert.equal(r.code, 0);
  const view = JSON.parse(r.stdout);
  assert.deepEqual(view, {
    url: 'http://h:1',
    urlFrom: 'env',
    apiKeySet: true,
    apiKeyHint: 'moat_s…',
    apiKeyFrom: 'env',
    configFile: '/cfg/moat.json',
    namespace: 'default',
    portalUrl: 'http://h:1/',
  });
  assert.ok(!r.stdout.includes(key));
});

test('the config file written by `moat up` is used by other commands', async () => {
  const s = await server((_req, _b, url) => (url.pathname === SBX ? { status: 200, body: { items: [] } } : undefined));
  const dir = await mkdtemp(join(tmpdir(), 'moat-cfg-'));
  closers.push(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'moat'));
  await writeFile(join(dir, 'moat', 'config.json'), JSON.stringify({ url: s.url, apiKey: 'from-file' }));
  const r = await run(['sandbox', 'list'], { env: { XDG_CONFIG_HOME: dir } });
  assert.equal(r.code, 0);
  assert.equal(r.stderr, 'No resources found in default namespace.\n');
  assert.equal(s.requests.length, 1);
});

test('sandbox list: table, wide, json, selector', async () => {
  const created = new Date(Date.now() - 5000).toISOString();
  const s = await server((req, _b, url) => {
    if (req.headers.authorization !== 'Bearer test-key') return { status: 401, body: status(401, 'Unauthorized', 'missing or invalid API key') };
    if (url.pathname === SBX)
      return {
        status: 200,
        body: {
          apiVersion: 'agents.x-k8s.io/v1alpha1',
          kind: 'SandboxList',
          items: [sandbox('alpha', { created }), sandbox('b', { phase: 'Pending', created })],
        },
      };
  });
  const table = await run(['sandbox', 'list', '-l', 'team=a'], { env: s.env });
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /^NAME    STATUS    RUNTIME   IMAGE   AGE\nalpha   Running   runc      base    \d+s\nb       Pending   runc      base    \d+s\n$/);
  assert.equal(s.requests[0].url.searchParams.get('labelSelector'), 'team=a');
  const wide = await run(['get', 'sandboxes', '-o', 'wide'], { env: s.env });
  assert.match(wide.stdout.split('\n')[0], /AGE   IMAGE DIGEST          CPU   MEMORY   PORTS$/);
  const json = JSON.parse((await run(['sandbox', 'list', '-o', 'json'], { env: s.env })).stdout);
  assert.equal(json.kind, 'SandboxList');
  assert.deepEqual(
    json.items.map((i: { metadata: { name: string } }) => i.metadata.name),
    ['alpha', 'b'],
  );
  assert.equal((await run(['get', 'sbx', '-o', 'name'], { env: s.env })).stdout, 'sandbox/alpha\nsandbox/b\n');
  const bad = await run(['sandbox', 'list'], { env: { ...s.env, MOAT_API_KEY: 'wrong' } });
  assert.deepEqual([bad.code, bad.stderr], [1, 'error: missing or invalid API key\n']);
  const fmt = await run(['sandbox', 'list', '-o', 'xml'], { env: s.env });
  assert.deepEqual([fmt.code, fmt.stderr], [1, 'error: unknown output format "xml": use one of json, yaml, wide, name\n']);
});

test('sandbox get: server errors come out as `error: <message>`', async () => {
  const s = await server((_r, _b, url) => {
    if (url.pathname === `${SBX}/a`) return { status: 200, body: sandbox('a') };
    return { status: 404, body: status(404, 'NotFound', 'sandbox "nope" not found in namespace "default"') };
  });
  const yaml = await run(['sandbox', 'get', 'a', '-o', 'yaml'], { env: s.env });
  assert.match(yaml.stdout, /^apiVersion: agents.x-k8s.io\/v1alpha1\nkind: Sandbox\nmetadata:\n  name: a\n/);
  const missing = await run(['get', 'sandbox', 'nope'], { env: s.env });
  assert.deepEqual([missing.code, missing.stdout, missing.stderr], [1, '', 'error: sandbox "nope" not found in namespace "default"\n']);
});

test('sandbox create sends the spec, waits for Ready and prints the name', async () => {
  const s = await server((req, body, url) => {
    if (req.method === 'POST' && url.pathname === SBX)
      return { status: 201, body: { ...sandbox('sbx-x1y2z', { phase: 'Pending' }), spec: JSON.parse(body.toString()).spec } };
    if (url.pathname === `${SBX}/sbx-x1y2z/wait`) return { status: 200, body: sandbox('sbx-x1y2z') };
  });
  const r = await run(
    [
      'sandbox',
      'create',
      '--runtime',
      'gvisor',
      '-e',
      'A=1',
      '--label',
      'team=a',
      '--cpu',
      '500m',
      '--memory',
      '1Gi',
      '--timeout',
      '2m',
      '--',
      'sleep',
      'infinity',
    ],
    { env: s.env },
  );
  assert.deepEqual([r.code, r.stdout, r.stderr], [0, 'sbx-x1y2z\n', '']);
  const sent = JSON.parse(s.requests[0].body.toString());
  assert.deepEqual(sent.metadata, { generateName: 'sbx-', labels: { team: 'a' } });
  assert.deepEqual(sent.spec.podTemplate.spec, {
    runtimeClassName: 'gvisor',
    containers: [
      {
        name: 'sandbox',
        image: 'base',
        command: ['sleep', 'infinity'],
        env: [{ name: 'A', value: '1' }],
        resources: { limits: { cpu: '500m', memory: '1Gi' } },
      },
    ],
  });
  assert.equal(s.requests[1].url.searchParams.get('timeoutSeconds'), '120');

  const noWait = await run(['sandbox', 'create', '--name', 'sbx-x1y2z', '--no-wait', '-o', 'json'], { env: s.env });
  assert.equal(noWait.code, 0);
  assert.equal(JSON.parse(noWait.stdout).status.phase, 'Pending');
  assert.equal(s.requests.length, 3, 'no wait request');
});

test('a sandbox that fails to start is named in the error', async () => {
  const s = await server((req, _b, url) => {
    if (req.method === 'POST') return { status: 201, body: sandbox('sbx-bad', { phase: 'Pending' }) };
    if (url.pathname.endsWith('/wait')) return { status: 409, body: status(409, 'SandboxFailed', 'image "nope" not found') };
  });
  const r = await run(['sandbox', 'create', '--image', 'nope'], { env: s.env });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: sandbox "sbx-bad" was created but is not Ready: image "nope" not found/);
});

test('sandbox delete carries on after a failure and exits 1', async () => {
  const s = await server((req, _b, url) => {
    const name = url.pathname.split('/').at(-1)!;
    if (name === 'gone') return { status: 404, body: status(404, 'NotFound', 'sandbox "gone" not found in namespace "default"') };
    if (req.method === 'GET') return { status: 200, body: sandbox(name) };
    if (req.method === 'DELETE') return { status: 200, body: sandbox(name, { phase: 'Terminating' }) };
  });
  const r = await run(['sandbox', 'delete', 'a', 'gone', 'b'], { env: s.env });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, 'sandbox "a" deleted\nsandbox "b" deleted\n');
  assert.equal(r.stderr, 'error: sandbox "gone" not found in namespace "default"\n');
  const deletes = s.requests.filter((q) => q.method === 'DELETE');
  assert.deepEqual(
    deletes.map((q) => q.url.pathname.split('/').at(-1)),
    ['a', 'b'],
  );
  assert.equal(deletes[0].url.searchParams.get('wait'), 'true');
  const ignoring = await run(['delete', 'sandbox', 'gone', '--ignore-not-found'], { env: s.env });
  assert.equal(ignoring.code, 0);
});

function execServer() {
  return server((req, body, url) => {
    if (req.method === 'GET' && url.pathname.startsWith(`${SBX}/`)) return { status: 200, body: sandbox('box') };
    if (!url.pathname.endsWith('/exec')) return;
    const { command } = JSON.parse(body.toString()) as { command: string[] };
    switch (command[0]) {
      case 'missing':
        return ndjson([{ type: 'error', reason: 'NotFound', message: 'exec: "missing": executable file not found in $PATH' }]);
      case 'slow':
        return ndjson([
          { type: 'started', pid: 1 },
          { type: 'exit', exitCode: 137, signal: 'SIGKILL', timedOut: true, durationMs: 1000 },
        ]);
      default:
        return ndjson([
          { type: 'started', pid: 1 },
          { type: 'stdout', data: b64(Buffer.from([0xff, 0x00, 0x41])) },
          { type: 'stderr', data: b64('oops\n') },
          { type: 'exit', exitCode: Number(command.at(-1)), signal: null, timedOut: false, durationMs: 2 },
        ]);
    }
  });
}

test('exec relays raw output and exits with the command exit code', async () => {
  const s = await execServer();
  const r = await run(['exec', 'box', '-e', 'K=V', '-w', '/tmp', '-u', 'nobody', '--timeout', '30', '--', 'sh', '-c', 'exit 3', '3'], { env: s.env });
  assert.equal(r.code, 3);
  assert.deepEqual([...r.stdoutBytes], [0xff, 0x00, 0x41], 'bytes pass through untouched');
  assert.equal(r.stderr, 'oops\n');
  const sent = JSON.parse(s.requests.find((q) => q.url.pathname.endsWith('/exec'))!.body.toString());
  assert.deepEqual(sent, { command: ['sh', '-c', 'exit 3', '3'], env: { K: 'V' }, cwd: '/tmp', user: 'nobody', timeoutSeconds: 30 });
});

test('exec: 127 when the program does not exist, 124 on timeout', async () => {
  const s = await execServer();
  const missing = await run(['exec', 'box', '--', 'missing'], { env: s.env });
  assert.equal(missing.code, 127);
  assert.equal(missing.stderr, 'error: exec: "missing": executable file not found in $PATH\n');
  const slow = await run(['exec', 'box', '--', 'slow'], { env: s.env });
  assert.equal(slow.code, 124);
  assert.match(slow.stderr, /timed out/);
});

test('apply: created, unchanged, immutable, unknown kinds', async () => {
  const live = new Map<string, unknown>();
  const s = await server((req, body, url) => {
    const name = url.pathname.slice(SBX.length + 1);
    if (req.method === 'GET' && name)
      return live.has(name) ? { status: 200, body: live.get(name) } : { status: 404, body: status(404, 'NotFound', 'not found') };
    if (req.method === 'POST') {
      const obj = JSON.parse(body.toString());
      const stored = { ...sandbox(obj.metadata.name), spec: obj.spec };
      live.set(obj.metadata.name, stored);
      return { status: 201, body: stored };
    }
  });
  const manifest = (image: string) => `apiVersion: agents.x-k8s.io/v1alpha1
kind: Sandbox
metadata:
  name: web
spec:
  podTemplate:
    spec:
      containers:
      - image: ${image}
`;
  const first = await run(['apply', '-f', '-'], { env: s.env, stdin: manifest('base') });
  assert.deepEqual([first.code, first.stdout], [0, 'sandbox/web created\n']);
  const again = await run(['apply', '-f', '-'], { env: s.env, stdin: manifest('base') });
  assert.deepEqual([again.code, again.stdout], [0, 'sandbox/web unchanged\n']);
  const changed = await run(['apply', '-f', '-'], { env: s.env, stdin: manifest('python') });
  assert.equal(changed.code, 1);
  assert.match(changed.stderr, /sandbox\/web: the spec of an existing sandbox cannot be changed; delete it and apply again/);
  const unknown = await run(['apply', '-f', '-'], { env: s.env, stdin: `kind: Deployment\nmetadata: {name: p}\n---\n${manifest('base')}` });
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /unsupported kind "Deployment": supported kinds are Sandbox, SandboxTemplate/);
  assert.equal(unknown.stdout, 'sandbox/web unchanged\n', 'the other documents are still applied');
});

test('wait: condition met, or exit 1 on timeout', async () => {
  const s = await server((_r, _b, url) => {
    if (url.pathname === `${SBX}/ok/wait`) return { status: 200, body: sandbox('ok') };
    if (url.pathname === `${SBX}/slow/wait`) return { status: 408, body: status(408, 'Timeout', 'timed out') };
  });
  const ok = await run(['wait', '--for=condition=Ready', 'sandbox/ok', '--timeout=30s'], { env: s.env });
  assert.deepEqual([ok.code, ok.stdout], [0, 'sandbox/ok condition met\n']);
  assert.equal(s.requests[0].url.searchParams.get('condition'), 'Ready');
  assert.equal(s.requests[0].url.searchParams.get('timeoutSeconds'), '30');
  const slow = await run(['wait', '--for', 'condition=Ready', 'sandbox', 'slow', '--timeout', '1s'], { env: s.env });
  assert.deepEqual([slow.code, slow.stderr], [1, 'error: timed out after 1s waiting for condition Ready on sandbox/slow\n']);
});

test('cp: a local directory goes up as a tar into an existing directory', async () => {
  const uploads: Buffer[] = [];
  const s = await server((req, body, url) => {
    const path = url.searchParams.get('path');
    if (url.pathname === `${SBX}/box`) return { status: 200, body: sandbox('box') };
    if (url.pathname.endsWith('/files/stat'))
      return path === '/workspace'
        ? { status: 200, body: { name: 'work', path, type: 'dir', size: 0, mode: '0755' } }
        : { status: 404, body: status(404, 'NotFound', 'no such file') };
    if (url.pathname.endsWith('/files/mkdir')) return { status: 201, body: { name: 'proj', path, type: 'dir' } };
    if (url.pathname.endsWith('/files/archive') && req.method === 'PUT') {
      uploads.push(body);
      return { status: 200, body: { files: 2, bytes: 10 } };
    }
    if (url.pathname.endsWith('/files/content') && req.method === 'PUT') return { status: 200, body: { name: 'x', path, type: 'file' } };
  });
  const dir = await mkdtemp(join(tmpdir(), 'moat-cp-'));
  closers.push(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'proj', 'src'), { recursive: true });
  await writeFile(join(dir, 'proj', 'README'), 'hi');
  await writeFile(join(dir, 'proj', 'src', 'main.py'), 'print(1)');
  const r = await run(['cp', 'proj', 'box:/workspace'], { env: s.env, cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const archive = s.requests.find((q) => q.url.pathname.endsWith('/files/archive'))!;
  assert.equal(archive.url.searchParams.get('path'), '/workspace/proj');
  const names: string[] = [];
  const extract = tar.extract();
  Readable.from([uploads[0]]).pipe(extract);
  for await (const e of extract) {
    names.push(e.header.name);
    e.resume();
  }
  assert.deepEqual(names, ['README', 'src/', 'src/main.py']);

  const file = await run(['cp', 'proj/README', 'box:/etc/motd'], { env: s.env, cwd: dir });
  assert.equal(file.code, 0, file.stderr);
  const put = s.requests.at(-1)!;
  assert.equal(put.url.searchParams.get('path'), '/etc/motd');
  assert.equal(put.body.toString(), 'hi');

  const both = await run(['cp', 'a', 'b'], { env: s.env });
  assert.deepEqual([both.code, both.stderr], [1, 'error: exactly one of SRC and DST must be in a sandbox, written NAME:/path\n']);
});

test('cp: a remote directory comes down and is extracted; a file goes to stdout with -', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'moat-cp-'));
  closers.push(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'remote', 'sub'), { recursive: true });
  await writeFile(join(dir, 'remote', 'sub', 'f.txt'), 'content');
  const tarball = await packDirectory(join(dir, 'remote'));
  const s = await server((_req, _b, url) => {
    const path = url.searchParams.get('path');
    if (url.pathname === `${SBX}/box`) return { status: 200, body: sandbox('box') };
    if (url.pathname.endsWith('/files/stat'))
      return { status: 200, body: { name: 'x', path, type: path === '/data/out' ? 'dir' : 'file', size: 3, mode: '0644' } };
    if (url.pathname.endsWith('/files/archive')) return { status: 200, raw: tarball, type: 'application/x-tar' };
    if (url.pathname.endsWith('/files/content')) return { status: 200, raw: 'abc', type: 'application/octet-stream' };
  });
  const r = await run(['cp', 'box:/data/out', 'local-out'], { env: s.env, cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await readFile(join(dir, 'local-out', 'sub', 'f.txt'), 'utf8'), 'content');
  const again = await run(['cp', 'box:/data/out', 'local-out'], { env: s.env, cwd: dir });
  assert.equal(again.code, 0, again.stderr);
  assert.equal(await readFile(join(dir, 'local-out', 'out', 'sub', 'f.txt'), 'utf8'), 'content', 'into an existing directory, like cp -r');
  const cat = await run(['cp', 'box:/etc/hostname', '-'], { env: s.env, cwd: dir });
  assert.deepEqual([cat.code, cat.stdout], [0, 'abc']);
});

test('usage errors come from commander with exit 1', async () => {
  const r = await run(['exec', 'box']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^error: missing required argument 'command'/);
  const help = await run(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: moat/);
});
