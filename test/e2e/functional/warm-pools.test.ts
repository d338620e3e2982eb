import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EXT, apiJson, claimBody, condition, create, poolBody, poolMembers, poolReady, templateBody, until } from '../../helpers/extensions.js';
import { NS, sh, startTestServer, type TestServer } from '../../helpers/server.js';

describe('templates, claims and warm pools', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(async () => {
    for (const plural of ['sandboxclaims', 'sandboxwarmpools']) {
      const list = await apiJson<{ items: { metadata: { name: string } }[] }>(server, `${EXT}/${plural}`);
      for (const o of list.items) await server.api(`${EXT}/${plural}/${o.metadata.name}?wait=true`, { method: 'DELETE' });
    }
    await server.close();
  });

  test('built-in templates are listed, readable and protected', async () => {
    const list = await apiJson<{ items: { metadata: { name: string; labels: Record<string, string> } }[] }>(server, `${EXT}/sandboxtemplates`);
    const names = list.items.map((t) => t.metadata.name);
    assert.ok(names.includes('base') && names.includes('python-runtime'), names.join());
    assert.equal(list.items[0]!.metadata.labels['moat.dev/builtin'], 'true');
    const del = await server.api(`${EXT}/sandboxtemplates/base`, { method: 'DELETE' });
    assert.equal(del.status, 409);
    assert.match(((await del.json()) as { message: string }).message, /built into Moat/);
  });

  test('an invalid template is refused with the reason', async () => {
    const bad = await server.api(`${EXT}/sandboxtemplates`, { method: 'POST', json: templateBody('bad', { resources: { limits: { memory: 'lots' } } }) });
    assert.equal(bad.status, 422, await bad.text());
    const unknownField = await server.api(`${EXT}/sandboxtemplates`, { method: 'POST', json: templateBody('bad', { colour: 'red' }) });
    assert.equal(unknownField.status, 400);
    assert.match(await unknownField.text(), /colour/);
    const probe = await server.api(`${EXT}/sandboxtemplates`, { method: 'POST', json: templateBody('bad', { readinessProbe: { httpGet: { port: 'web' } } }) });
    assert.equal(probe.status, 422);
    assert.match(((await probe.json()) as { message: string }).message, /port "web"/);
    const badPool = await server.api(`${EXT}/sandboxwarmpools`, { method: 'POST', json: poolBody('p', 't', -1) });
    assert.equal(badPool.status, 400);
    const noRef = await server.api(`${EXT}/sandboxclaims`, { method: 'POST', json: { metadata: { name: 'c' }, spec: {} } });
    assert.equal(noRef.status, 422);
    assert.match(await noRef.text(), /sandboxTemplateRef/);
  });

  test('a claim is served from the pool, gets its own identity, and the pool refills', async () => {
    await create(server, 'sandboxtemplates', templateBody('idle', { env: [{ name: 'FROM_TEMPLATE', value: '1' }] }, { envVarsInjectionPolicy: 'Allowed' }));
    await create(server, 'sandboxwarmpools', poolBody('idle-pool', 'idle', 2));
    await poolReady(server, 'idle-pool', 2);
    const before = (await poolMembers(server, 'idle-pool')).map((m) => m.metadata.uid);

    // Nobody can use a member before it is claimed.
    const member = (await poolMembers(server, 'idle-pool'))[0]!;
    const early = await sh(server, member.metadata.name, 'true');
    assert.equal(early.status, 409);

    const claim = await create(
      server,
      'sandboxclaims',
      claimBody('agent-1', 'idle', { env: [{ name: 'TASK', value: 'forty-two' }], additionalPodMetadata: { labels: { team: 'a' } } }),
    );
    assert.equal(condition(claim)?.status, 'True', JSON.stringify(claim.status));
    assert.equal(condition(claim, 'WarmPool')?.reason, 'FromWarmPool');
    assert.equal(claim.status.warmPool, 'idle-pool');
    assert.equal(claim.status.sandbox.name, 'agent-1');

    const sandbox = await apiJson(server, `${NS}/agent-1`);
    assert.ok(before.includes(sandbox.metadata.uid), 'the sandbox is one of the pool members');
    assert.equal(sandbox.metadata.annotations?.['moat.dev/adopted-from-pool'], 'idle-pool');
    assert.equal(sandbox.metadata.labels?.['agents.x-k8s.io/warm-pool'], undefined);
    assert.equal(sandbox.metadata.labels?.team, 'a');
    assert.equal(sandbox.metadata.labels?.['agents.x-k8s.io/claim'], 'agent-1');

    const r = await sh(server, 'agent-1', 'echo "$(hostname) $HOSTNAME $TASK $FROM_TEMPLATE $(cat /etc/hostname)"; grep -c agent-1 /etc/hosts');
    assert.equal(r.stdout, 'agent-1 agent-1 forty-two 1 agent-1\n1\n');

    const refilled = await poolReady(server, 'idle-pool', 2);
    const after = (await poolMembers(server, 'idle-pool')).map((m) => m.metadata.uid);
    assert.ok(!after.includes(sandbox.metadata.uid), 'a claimed sandbox never returns to the pool');
    assert.equal(refilled.status.selector, 'agents.x-k8s.io/warm-pool=idle-pool');

    // Deleting the claim deletes its sandbox.
    await apiJson(server, `${EXT}/sandboxclaims/agent-1?wait=true`, { method: 'DELETE' }, 200);
    assert.equal((await server.api(`${NS}/agent-1`)).status, 404);
  });

  test('a claim on an empty pool falls back to a cold start', async () => {
    await create(server, 'sandboxwarmpools', poolBody('empty-pool', 'base', 0));
    const claim = await create(server, 'sandboxclaims', claimBody('cold-1', 'base'));
    assert.equal(condition(claim, 'WarmPool')?.reason, 'PoolExhausted');
    assert.match(condition(claim, 'WarmPool')!.message, /empty-pool/);
    const ready = await apiJson(server, `${EXT}/sandboxclaims/cold-1/wait?timeoutSeconds=60`, {}, 200);
    assert.equal(condition(ready)?.status, 'True');
    assert.equal((await sh(server, 'cold-1', 'hostname')).stdout, 'cold-1\n');
    const none = await create(server, 'sandboxclaims', claimBody('cold-2', 'base', { warmpool: 'none' }));
    assert.equal(condition(none, 'WarmPool')?.reason, 'WarmPoolDisabled');
  });

  test('a pool scaled from 5 to 0 deletes its idle members and their host state', async () => {
    await create(server, 'sandboxwarmpools', poolBody('five', 'base', 5));
    const members = (await poolReady(server, 'five', 5)) && (await poolMembers(server, 'five'));
    assert.equal(members.length, 5);
    const pool = await apiJson(server, `${EXT}/sandboxwarmpools/five`);
    await apiJson(server, `${EXT}/sandboxwarmpools/five`, { method: 'PUT', json: { ...pool, spec: { ...pool.spec, replicas: 0 } } }, 200);
    await until('pool five to be empty', async () => ((await poolMembers(server, 'five')).length === 0 ? true : undefined));
    await until('member directories to be gone', async () => {
      const dirs = await readdir(join(server.dataDir, 'sandboxes'));
      return members.every((m) => !dirs.includes(m.metadata.uid)) ? true : undefined;
    });
  });

  test('a missing template or image is a clear status, and a template appearing later serves waiting claims', async () => {
    const lost = await create(server, 'sandboxclaims', claimBody('lost', 'not-yet'));
    assert.equal(condition(lost)?.reason, 'TemplateNotFound');
    assert.match(condition(lost)!.message, /"not-yet" not found/);
    await create(server, 'sandboxwarmpools', poolBody('lost-pool', 'not-yet', 1));
    const pool = await until('pool condition', async () => {
      const p = await apiJson(server, `${EXT}/sandboxwarmpools/lost-pool`);
      return condition(p)?.reason === 'TemplateNotFound' ? p : undefined;
    });
    assert.equal(pool.status.replicas, 0);

    await create(server, 'sandboxtemplates', templateBody('not-yet'));
    await apiJson(server, `${EXT}/sandboxclaims/lost/wait?timeoutSeconds=60`, {}, 200);
    await poolReady(server, 'lost-pool', 1);

    await create(server, 'sandboxtemplates', templateBody('no-image', { image: 'does-not-exist' }));
    const claim = await create(server, 'sandboxclaims', claimBody('no-image', 'no-image'));
    assert.equal(condition(claim)?.reason, 'ImageNotFound');
    assert.match(condition(claim)!.message, /image "does-not-exist:latest" not found in namespace "default"; known images: .*base/);
    await create(server, 'sandboxwarmpools', poolBody('no-image-pool', 'no-image', 2));
    await until(
      'pool ImageNotFound',
      async () => condition(await apiJson(server, `${EXT}/sandboxwarmpools/no-image-pool`))?.reason === 'ImageNotFound' || undefined,
    );
  });

  test('deleting a template while claims use it leaves them running with a clear status', async () => {
    await create(server, 'sandboxtemplates', templateBody('doomed'));
    await create(server, 'sandboxwarmpools', poolBody('doomed-pool', 'doomed', 1));
    await create(server, 'sandboxclaims', claimBody('survivor', 'doomed'));
    await apiJson(server, `${EXT}/sandboxclaims/survivor/wait?timeoutSeconds=60`, {}, 200);
    await apiJson(server, `${EXT}/sandboxtemplates/doomed`, { method: 'DELETE' }, 200);

    const claim = await apiJson(server, `${EXT}/sandboxclaims/survivor`);
    assert.equal(condition(claim)?.status, 'True');
    assert.equal(condition(claim, 'TemplateAvailable')?.reason, 'TemplateNotFound');
    assert.equal((await sh(server, 'survivor', 'echo alive')).stdout, 'alive\n');
    const late = await create(server, 'sandboxclaims', claimBody('too-late', 'doomed'));
    assert.equal(condition(late)?.reason, 'TemplateNotFound');
    await until(
      'pool TemplateNotFound',
      async () => condition(await apiJson(server, `${EXT}/sandboxwarmpools/doomed-pool`))?.reason === 'TemplateNotFound' || undefined,
    );
    assert.equal((await server.api('/healthz')).status, 200);
  });

  test('20 concurrent claims against a pool of 10: 20 ready sandboxes, none shared', async () => {
    await create(server, 'sandboxtemplates', templateBody('burst'));
    await create(server, 'sandboxwarmpools', poolBody('burst-pool', 'burst', 10));
    await poolReady(server, 'burst-pool', 10, 120_000);
    const names = Array.from({ length: 20 }, (_, i) => `burst-${i}`);
    const claims = await Promise.all(names.map((n) => create(server, 'sandboxclaims', claimBody(n, 'burst'))));
    const fromPool = claims.filter((c) => c.status.warmPool === 'burst-pool');
    assert.equal(fromPool.length, 10, 'every pooled sandbox is handed out once');
    const sandboxes = await Promise.all(names.map((n) => apiJson(server, `${NS}/${n}/wait?timeoutSeconds=120`, {}, 200)));
    assert.equal(new Set(sandboxes.map((s) => s.metadata.uid)).size, 20, 'no sandbox serves two claims');
    for (const n of names) assert.equal((await sh(server, n, 'hostname')).stdout, `${n}\n`);
  });

  test('python-runtime template answers its HTTP API on port 8888 once Ready', async () => {
    const claim = await create(server, 'sandboxclaims', claimBody('py', 'python-runtime'));
    assert.equal(claim.status.sandbox.name, 'py');
    await apiJson(server, `${EXT}/sandboxclaims/py/wait?timeoutSeconds=60`, {}, 200);
    const health = await sh(server, 'py', 'curl -sf localhost:8888/');
    assert.deepEqual(JSON.parse(health.stdout), { status: 'ok', message: 'Sandbox Runtime is active.' });
    // The same API from outside, through port exposure.
    assert.deepEqual(await (await server.api(`${NS}/py/ports/8888/`)).json(), { status: 'ok', message: 'Sandbox Runtime is active.' });
    const viaPort = await server.api(`${NS}/py/ports/8888/execute`, { method: 'POST', json: { command: 'echo from-outside' } });
    assert.deepEqual(await viaPort.json(), { stdout: 'from-outside\n', stderr: '', exit_code: 0 });
    const run = await sh(
      server,
      'py',
      `curl -sf -X POST localhost:8888/execute -H 'content-type: application/json' -d '{"command": "sh -c \\"echo out; echo err >&2; exit 3\\""}'`,
    );
    assert.deepEqual(JSON.parse(run.stdout), { stdout: 'out\n', stderr: 'err\n', exit_code: 3 });
    const pwd = await sh(server, 'py', `curl -sf -X POST localhost:8888/execute -d '{"command": "pwd"}'; df --output=target /workspace | tail -1`);
    assert.equal(pwd.stdout.split('"stdout": "')[1]?.split('\\n')[0], '/workspace');
    assert.match(pwd.stdout, /\/workspace\n$/);
  });

  test('claim env follows the template policy; a main command forces a cold start', async () => {
    await create(server, 'sandboxtemplates', templateBody('strict'));
    const refused = await create(server, 'sandboxclaims', claimBody('strict-1', 'strict', { env: [{ name: 'A', value: '1' }] }));
    assert.equal(condition(refused)?.reason, 'InvalidClaim');
    assert.match(condition(refused)!.message, /envVarsInjectionPolicy: Disallowed/);

    await create(server, 'sandboxtemplates', templateBody('server', { command: ['sleep', 'infinity'] }, { envVarsInjectionPolicy: 'Overrides' }));
    await create(server, 'sandboxwarmpools', poolBody('server-pool', 'server', 1));
    await poolReady(server, 'server-pool', 1);
    const claim = await create(server, 'sandboxclaims', claimBody('server-1', 'server', { env: [{ name: 'A', value: '1' }] }));
    assert.equal(condition(claim, 'WarmPool')?.reason, 'ColdStartRequired');
    await apiJson(server, `${NS}/server-1/wait?timeoutSeconds=60`, {}, 200);
    assert.equal(
      (await sh(server, 'server-1', 'tr "\\0" "\\n" < /proc/1/environ | grep -c "^A=1$" || true; pgrep -c sleep')).stdout,
      '1\n1\n',
      'the main command started with the claim env',
    );
  });

  test('a claim past its shutdownTime is removed with its sandbox (shutdownPolicy Delete)', async () => {
    const shutdownTime = new Date(Date.now() + 1500).toISOString();
    await create(server, 'sandboxclaims', claimBody('brief', 'base', { lifecycle: { shutdownTime, shutdownPolicy: 'Delete' } }));
    await apiJson(server, `${NS}/brief/wait?timeoutSeconds=60`, {}, 200);
    await until('claim brief to be gone', async () => ((await server.api(`${EXT}/sandboxclaims/brief`)).status === 404 ? true : undefined), 15_000);
    await until('sandbox brief to be gone', async () => ((await server.api(`${NS}/brief`)).status === 404 ? true : undefined), 15_000);
  });

  test('reserved labels cannot be set by users', async () => {
    const res = await server.api(NS, {
      method: 'POST',
      json: {
        metadata: { name: 'sneaky', labels: { 'agents.x-k8s.io/warm-pool': 'idle-pool' } },
        spec: { podTemplate: { spec: { containers: [{ image: 'base' }] } } },
      },
    });
    assert.equal(res.status, 400);
    assert.match(await res.text(), /set by Moat/);
  });
});
