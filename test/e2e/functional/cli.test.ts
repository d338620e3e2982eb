import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runProcess } from '../../helpers/run-process.js';
import { startTestServer, type TestServer } from '../../helpers/server.js';

const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');

describe('moat CLI against a real server', () => {
  let server: TestServer;
  let work: string;
  let env: Record<string, string>;
  before(async () => {
    server = await startTestServer();
    work = await mkdtemp(join(tmpdir(), 'moat-cli-'));
    env = { ...(process.env as Record<string, string>), MOAT_URL: server.url, MOAT_API_KEY: server.adminKey, MOAT_CONFIG: join(work, 'config.json') };
  });
  after(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });

  /** Run the built CLI as a user would; resolves with its output and exit code. */
  function moat(args: string[], opts: { input?: string | Buffer; env?: Record<string, string>; via?: string[] } = {}) {
    const [cmd, ...pre] = opts.via ?? [process.execPath, CLI];
    return runProcess(cmd!, [...pre, ...args], { env: { ...env, ...opts.env }, cwd: work, input: opts.input });
  }

  test('sandbox create blocks until Ready and prints the name', async () => {
    const r = await moat(['sandbox', 'create', '--image', 'base', '--name', 'c1']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'c1\n');
    const got = await moat(['sandbox', 'get', 'c1', '-o', 'json']);
    const s = JSON.parse(got.stdout);
    assert.equal(s.status.phase, 'Running');
  });

  test('exec prints output and exits with the command exit code', async () => {
    let r = await moat(['exec', 'c1', '--', 'python3', '-c', 'print(1)']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '1\n');
    r = await moat(['exec', 'c1', '--', 'sh', '-c', 'echo err >&2; exit 7']);
    assert.equal(r.code, 7);
    assert.equal(r.stderr, 'err\n');
    r = await moat(['exec', 'c1', '--', 'no-such-cmd']);
    assert.equal(r.code, 127);
    r = await moat(['exec', '-i', 'c1', '--', 'tr', 'a-z', 'A-Z'], { input: 'piped input\n' });
    assert.equal(r.stdout, 'PIPED INPUT\n');
    assert.equal(r.code, 0);
  });

  test('shell gives an interactive TTY', async () => {
    // `script` gives the CLI a real terminal, as a person's would be.
    const r = await moat([], { via: ['script', '-qec', `${process.execPath} ${CLI} shell c1`, '/dev/null'], input: 'tty; echo "rows $(stty size)"; exit 5\n' });
    assert.match(r.stdout, /\/dev\/pts\/\d+/);
    assert.match(r.stdout, /rows \d+ \d+/);
    assert.equal(r.code, 5);
  });

  test('cp and files move data both ways', async () => {
    await mkdir(join(work, 'src', 'sub'), { recursive: true });
    await writeFile(join(work, 'src', 'a.txt'), 'alpha');
    await writeFile(join(work, 'src', 'sub', 'b.txt'), 'beta');
    let r = await moat(['cp', join(work, 'src'), 'c1:/workspace/src']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['files', 'cat', 'c1', '/workspace/src/sub/b.txt']);
    assert.equal(r.stdout, 'beta');
    r = await moat(['files', 'write', 'c1', '/workspace/w.txt'], { input: 'written' });
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['files', 'ls', 'c1', '/workspace']);
    assert.match(r.stdout, /src/);
    assert.match(r.stdout, /w\.txt/);
    r = await moat(['cp', 'c1:/workspace/w.txt', join(work, 'back.txt')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(work, 'back.txt'), 'utf8'), 'written');
    r = await moat(['cp', 'c1:/workspace/src', join(work, 'tree')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(join(work, 'tree', 'sub', 'b.txt'), 'utf8'), 'beta');
  });

  test('apply -f creates from YAML, is idempotent, and delete -f removes', async () => {
    const yaml = `apiVersion: agents.x-k8s.io/v1alpha1
kind: Sandbox
metadata:
  name: fromyaml
spec:
  podTemplate:
    spec:
      containers:
      - name: sandbox
        image: base
        resources:
          limits: {memory: 256Mi}
`;
    await writeFile(join(work, 's.yaml'), yaml);
    let r = await moat(['apply', '-f', join(work, 's.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /sandbox\/fromyaml created/);
    r = await moat(['wait', '--for=condition=Ready', 'sandbox/fromyaml', '--timeout=60s']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['apply', '-f', join(work, 's.yaml')]);
    assert.match(r.stdout, /sandbox\/fromyaml unchanged/);
    r = await moat(['sandbox', 'list']);
    assert.match(r.stdout, /NAME\s+STATUS/);
    assert.match(r.stdout, /fromyaml/);
    r = await moat(['delete', '-f', join(work, 's.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await moat(['sandbox', 'get', 'fromyaml'])).code, 1);
  });

  test('errors go to stderr with a non-zero exit and a useful message', async () => {
    let r = await moat(['sandbox', 'get', 'nope']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error: sandbox "nope" not found/);
    r = await moat(['sandbox', 'create', '--image', 'nosuch', '--name', 'x']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /known images: .*base/);
    r = await moat(['sandbox', 'list'], { env: { MOAT_API_KEY: 'moat_wrong' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /invalid API key/);
    r = await moat(['sandbox', 'list'], { env: { MOAT_URL: '', MOAT_API_KEY: '' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /moat up/);
  });

  test('sandbox delete removes several and reports each', async () => {
    await moat(['sandbox', 'create', '--name', 'd1']);
    const r = await moat(['sandbox', 'delete', 'd1', 'c1', 'missing']);
    assert.notEqual(r.code, 0, 'one of them did not exist');
    assert.match(r.stdout, /sandbox "d1" deleted/);
    assert.match(r.stdout, /sandbox "c1" deleted/);
    assert.match(r.stderr, /missing/);
  });

  test('the agent-sandbox warm-pool quickstart works with the same YAML', async () => {
    const examples = join(import.meta.dirname, '../../../examples/warmpool-quickstart');
    let r = await moat(['apply', '-f', join(examples, 'sandbox.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      'sandboxtemplate/secure-datascience-template created\nsandboxwarmpool/sandboxwarmpool-example created\nsandboxclaim/my-secure-sandbox created\n',
    );
    r = await moat(['wait', '--for=condition=Ready', 'sandbox/my-secure-sandbox', '--timeout=60s']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['exec', 'my-secure-sandbox', '--', 'sh', '-c', 'df -h --output=target,size /workspace | tail -1; pgrep -c sleep']);
    assert.match(r.stdout, /^\/workspace\s+5\.\dG\n1\n$/, 'the claim got its own 6Gi volume at /workspace');
    r = await moat(['apply', '-f', join(examples, 'sandbox.yaml')]);
    assert.equal(
      r.stdout,
      'sandboxtemplate/secure-datascience-template unchanged\nsandboxwarmpool/sandboxwarmpool-example unchanged\nsandboxclaim/my-secure-sandbox unchanged\n',
    );

    r = await moat(['wait', '--for=condition=Ready', 'sandboxwarmpool/sandboxwarmpool-example', '--timeout=60s']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['get', 'sandboxwarmpools']);
    assert.match(r.stdout, /^NAME\s+TEMPLATE\s+DESIRED\s+READY\s+AGE\nsandboxwarmpool-example\s+secure-datascience-template\s+1\s+1\s/);
    r = await moat(['get', 'claims']);
    assert.match(r.stdout, /my-secure-sandbox\s+my-secure-sandbox\s+True\s/);
    r = await moat(['get', 'templates', '-o', 'name']);
    assert.match(
      r.stdout,
      /sandboxtemplate\/base\nsandboxtemplate\/code-interpreter\nsandboxtemplate\/python-runtime\nsandboxtemplate\/secure-datascience-template\n/,
    );

    // Scaling through apply reconciles the pool.
    const scaled = (await readFile(join(examples, 'sandbox.yaml'), 'utf8')).replace('replicas: 1', 'replicas: 2');
    r = await moat(['apply', '-f', '-'], { input: scaled });
    assert.match(r.stdout, /sandboxwarmpool\/sandboxwarmpool-example configured/);
    r = await moat(['wait', '--for=condition=Ready', 'pool/sandboxwarmpool-example', '--timeout=60s']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['get', 'pool', 'sandboxwarmpool-example', '-o', 'json']);
    assert.equal(JSON.parse(r.stdout).status.readyReplicas, 2);

    r = await moat(['delete', '-f', join(examples, 'sandbox.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['get', 'sandboxes', '-o', 'name']);
    assert.doesNotMatch(r.stdout, /my-secure-sandbox|sandboxwarmpool-example/);
  });

  test('claims of the built-in python-runtime template, from a v1beta1 warmPoolRef', async () => {
    const examples = join(import.meta.dirname, '../../../examples/warmpool-quickstart');
    let r = await moat(['apply', '-f', join(examples, 'python-runtime.yaml')]);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['wait', '--for=condition=Ready', 'sandbox/quickstart-test', '--timeout=60s']);
    assert.equal(r.code, 0, r.stderr);
    r = await moat(['exec', 'quickstart-test', '--', 'curl', '-s', 'localhost:8888/']);
    assert.deepEqual(JSON.parse(r.stdout), { status: 'ok', message: 'Sandbox Runtime is active.' });
    r = await moat(['delete', 'sandboxclaim', 'quickstart-test']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await moat(['get', 'sandbox', 'quickstart-test'])).code, 1);
    r = await moat(['delete', 'pool', 'python-warmpool']);
    assert.equal(r.code, 0, r.stderr);
  });

  test('sandbox create --template claims a sandbox; deleting the sandbox deletes its claim', async () => {
    let r = await moat(['sandbox', 'create', '--template', 'base', '--name', 'from-tpl', '-e', 'A=1']);
    assert.equal(r.code, 1, 'base does not let claims set env');
    assert.match(r.stderr, /envVarsInjectionPolicy/);
    r = await moat(['sandbox', 'create', '--template', 'base', '--name', 'from-tpl']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'from-tpl\n');
    assert.equal((await moat(['exec', 'from-tpl', '--', 'hostname'])).stdout, 'from-tpl\n');
    assert.match((await moat(['get', 'claim', 'from-tpl'])).stdout, /from-tpl\s+base\s+from-tpl\s+True/);
    r = await moat(['sandbox', 'create', '--template', 'base', '--cpu', '2']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /resources cannot be combined with template "base"/);
    r = await moat(['sandbox', 'delete', 'from-tpl']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await moat(['get', 'claim', 'from-tpl'])).code, 1);
  });
});
