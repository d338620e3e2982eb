import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EXT, apiJson, claimBody, create, templateBody, until } from '../../helpers/extensions.js';
import { NS, execApi, sandboxBody, sh, startTestServer, type TestServer } from '../../helpers/server.js';
import { kill, spawnServer } from '../../helpers/spawn-server.js';

/** A sandbox with extra spec fields (shutdownTime, shutdownPolicy, idlePolicy), Ready. */
async function createWith(server: TestServer, name: string, spec: Record<string, unknown>) {
  const body = sandboxBody(name);
  Object.assign(body.spec, spec);
  const res = await server.api(NS, { method: 'POST', json: body });
  assert.equal(res.status, 201, await res.clone().text());
  const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=120`);
  assert.equal(wait.status, 200, await wait.clone().text());
  return (await wait.json()) as any;
}

const phase = async (server: TestServer, name: string) => {
  const res = await server.api(`${NS}/${name}`);
  return res.status === 404 ? 'gone' : ((await res.json()) as any).status.phase;
};
const reasons = async (server: TestServer, name: string) =>
  ((await (await server.api(`${NS}/${name}/events`)).json()) as any).items.map((e: any) => e.reason) as string[];
const inSeconds = (s: number) => new Date(Date.now() + s * 1000).toISOString();

describe('scheduled shutdown and idle reclaim', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(() => server.close());

  test('at its shutdownTime a sandbox with shutdownPolicy Delete is deleted, as an event and an audit record', async () => {
    await createWith(server, 'short', { shutdownTime: inSeconds(3), shutdownPolicy: 'Delete' });
    assert.equal(await phase(server, 'short'), 'Running');
    await until('the sandbox is deleted after its shutdownTime', async () => (await phase(server, 'short')) === 'gone' || undefined, 20_000);
    const audit = await apiJson<any>(server, '/apis/moat.dev/v1/audit?sandbox=short&action=lifecycle.delete');
    assert.equal(audit.items.length, 1, JSON.stringify(audit));
    assert.equal(audit.items[0].result, 'success');
    assert.match(audit.items[0].detail.why, /shutdownTime/);
  });

  test('under shutdownPolicy Retain (the default) an expired sandbox is hibernated and kept; use is refused until an extend brings it back', async () => {
    await createWith(server, 'kept', { shutdownTime: inSeconds(3) });
    await sh(server, 'kept', 'echo precious > /data/f');
    const expired = (s: any) => s.status.conditions.find((c: any) => c.type === 'Expired')?.status === 'True';
    await until('expired', async () => expired(await apiJson<any>(server, `${NS}/kept`)) || undefined, 20_000);
    const s = await apiJson<any>(server, `${NS}/kept`);
    assert.equal(s.status.phase, 'Hibernated');
    assert.equal(s.status.conditions.find((c: any) => c.type === 'Ready').reason, 'SandboxExpired');
    const r = await execApi(server, 'kept', { command: ['true'] });
    assert.equal(r.status, 409);
    assert.match((r.error as any).message, /extend/);
    assert.equal((await server.api(`${NS}/kept/wake`, { method: 'POST' })).status, 409);
    const ext = await server.api(`${NS}/kept/extend`, { method: 'POST', json: { ttlSeconds: 600 } });
    assert.equal(ext.status, 200, await ext.clone().text());
    assert.equal(((await ext.json()) as any).status.phase, 'Running');
    assert.equal((await sh(server, 'kept', 'cat /data/f')).stdout, 'precious\n', '/data kept through the expiry');
  });

  test('idle policy: paused, then hibernated, then deleted, each audited', async () => {
    await createWith(server, 'sleepy', { idlePolicy: { pauseAfterSeconds: 1, hibernateAfterSeconds: 4, deleteAfterSeconds: 8 } });
    for (const [step, want] of [
      ['paused', 'Paused'],
      ['hibernated', 'Hibernated'],
      ['deleted', 'gone'],
    ] as const) {
      await until(step, async () => (await phase(server, 'sleepy')) === want || undefined, 20_000);
    }
    const audit = await apiJson<any>(server, '/apis/moat.dev/v1/audit?sandbox=sleepy');
    const steps = audit.items.map((e: any) => e.action).filter((a: string) => a.startsWith('lifecycle.'));
    assert.deepEqual(steps, ['lifecycle.pause', 'lifecycle.hibernate', 'lifecycle.delete']);
  });

  test('extend moves the shutdown; bad extends are refused and change nothing', async () => {
    await createWith(server, 'extended', { shutdownTime: inSeconds(4), shutdownPolicy: 'Delete' });
    const extend = (json: unknown) => server.api(`${NS}/extended/extend`, { method: 'POST', json });
    assert.equal((await extend({})).status, 400);
    assert.equal((await extend({ ttlSeconds: 60, shutdownTime: inSeconds(60) })).status, 400);
    assert.equal((await extend({ ttlSeconds: 0 })).status, 400);
    assert.equal((await extend({ shutdownTime: 'tomorrow' })).status, 400);
    const res = await extend({ ttlSeconds: 600 });
    assert.equal(res.status, 200);
    const moved = Date.parse(((await res.json()) as any).spec.shutdownTime);
    assert.ok(Math.abs(moved - (Date.now() + 600_000)) < 10_000, `shutdownTime moved to ${new Date(moved).toISOString()}`);
    await sleep(6000);
    assert.equal(await phase(server, 'extended'), 'Running', 'still running past the original shutdownTime');
  });

  test("a claimed sandbox's extend moves its claim's shutdown", async () => {
    await create(server, 'sandboxtemplates', templateBody('ttl-tpl', {}, { ttlSeconds: 5 }));
    await create(server, 'sandboxclaims', claimBody('ttl-claim', 'ttl-tpl'));
    await until('the claim is served', async () => (await phase(server, 'ttl-claim')) === 'Running' || undefined, 60_000);
    const first = Date.parse((await apiJson<any>(server, `${NS}/ttl-claim`)).spec.shutdownTime);
    assert.ok(first > Date.now() && first < Date.now() + 6000, "the sandbox shows its claim's shutdown");
    const res = await server.api(`${NS}/ttl-claim/extend`, { method: 'POST', json: { ttlSeconds: 300 } });
    assert.equal(res.status, 200, await res.clone().text());
    const claim = await apiJson<any>(server, `${EXT}/sandboxclaims/ttl-claim`);
    assert.ok(Date.parse(claim.status.shutdownTime) > Date.now() + 290_000, JSON.stringify(claim.status));
    await sleep(7000);
    assert.equal(await phase(server, 'ttl-claim'), 'Running', 'the claim did not expire at its first shutdownTime');
  });

  test('an idle sandbox is paused; a running command keeps it from idling; use resumes it', async () => {
    await createWith(server, 'idler', { idlePolicy: { pauseAfterSeconds: 2 } });
    const busy = sh(server, 'idler', 'sleep 5; echo done');
    await sleep(4000);
    assert.equal(await phase(server, 'idler'), 'Running', 'not paused while a command runs');
    assert.equal((await busy).stdout, 'done\n');
    await until('paused once idle', async () => (await phase(server, 'idler')) === 'Paused' || undefined, 15_000);
    assert.ok((await reasons(server, 'idler')).includes('IdlePaused'));
    assert.equal((await sh(server, 'idler', 'echo back')).stdout, 'back\n');
    assert.equal(await phase(server, 'idler'), 'Running');
    const audit = await apiJson<any>(server, '/apis/moat.dev/v1/audit?sandbox=idler&action=lifecycle.pause');
    assert.ok(audit.items.length >= 1);
  });

  test('an idle policy out of order is refused', async () => {
    const body = sandboxBody('bad-idle');
    Object.assign(body.spec, { idlePolicy: { pauseAfterSeconds: 60, hibernateAfterSeconds: 30 } });
    const res = await server.api(NS, { method: 'POST', json: body });
    assert.equal(res.status, 422);
    assert.match(((await res.json()) as any).message, /hibernateAfterSeconds \(30\) must be later than pauseAfterSeconds \(60\)/);
    assert.equal((await server.api(`${NS}/bad-idle`)).status, 404);
  });
});

describe('scheduled shutdown across a crash of the server', () => {
  let dataDir: string;
  after(() => rm(dataDir, { recursive: true, force: true }));

  test('a shutdownTime that passes while the server is down is acted on when it comes back', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'moat-ttl-restart-'));
    let live = await spawnServer(dataDir);
    try {
      await createWith(live.server, 'doomed', { shutdownTime: inSeconds(4), shutdownPolicy: 'Delete' });
      await kill(live.child);
      await sleep(5000);
      live = await spawnServer(dataDir);
      await until('deleted after the restart', async () => (await phase(live.server, 'doomed')) === 'gone' || undefined, 20_000);
    } finally {
      // Whatever happened, nothing of this test may outlive it.
      await live.server.api(`${NS}/doomed?wait=true`, { method: 'DELETE' }).catch(() => {});
      await kill(live.child);
    }
  });
});
