// agent-sandbox's python-runtime example: its tester.py flow (health check, then `echo 'hello world'`) through Moat's port exposure.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EXT, apiJson, claimBody, create } from '../helpers/extensions.js';
import { NS, startTestServer, type TestServer } from '../helpers/server.js';

describe('agent-sandbox runtime API (python-runtime template)', () => {
  let server: TestServer;
  let base: string;
  before(async () => {
    server = await startTestServer();
    await create(server, 'sandboxclaims', claimBody('tester', 'python-runtime'));
    await apiJson(server, `${EXT}/sandboxclaims/tester/wait?timeoutSeconds=120`);
    base = `${NS}/tester/ports/8888`;
  });
  after(async () => {
    await server.api(`${EXT}/sandboxclaims/tester?wait=true`, { method: 'DELETE' });
    await server.close();
  });

  test("tester.py: GET / is healthy, then POST /execute runs echo 'hello world'", async () => {
    const health = await server.api(`${base}/`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
    const run = await server.api(`${base}/execute`, { method: 'POST', json: { command: "echo 'hello world'" } });
    assert.equal(run.status, 200);
    assert.deepEqual(await run.json(), { stdout: 'hello world\n', stderr: '', exit_code: 0 });
  });

  test('the port is not reachable without a Moat key', async () => {
    const res = await fetch(`${server.url}${base}/`);
    assert.equal(res.status, 401);
  });
});
