import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EXT, create, poolReady, poolMembers, templateBody, poolBody, claimBody, until } from '../../helpers/extensions.js';
import { NS, sh, startTestServer, testRuntimes, type TestServer } from '../../helpers/server.js';
import { ready, remove, withClaim, withTemplate } from '../../helpers/volumes.js';

const VOLUMES = '/apis/moat.dev/v1/namespaces/default/volumes';

interface Volume {
  name: string;
  sizeBytes: number;
  sandbox: string | null;
  retain: boolean;
}

async function volume(server: TestServer, name: string): Promise<Volume | undefined> {
  const res = await server.api(`${VOLUMES}/${name}`);
  if (res.status === 404) return undefined;
  assert.equal(res.status, 200);
  return (await res.json()) as Volume;
}

async function run(server: TestServer, name: string, script: string): Promise<string> {
  const r = await sh(server, name, script);
  assert.equal(r.status, 200, JSON.stringify(r.error));
  assert.equal(r.exit?.exitCode, 0, `${script}: ${r.stderr}`);
  return r.stdout;
}

describe('named volumes', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(() => server?.close());

  test('requests are validated at the boundary', async () => {
    for (const [body, status] of [
      [{ name: 'Bad_Name', size: '64Mi' }, 400],
      [{ name: '../x', size: '64Mi' }, 400],
      [{ name: 'ok', size: '2Pi' }, 422],
      [{ name: 'ok', size: '1Ki' }, 422],
      [{ name: 'ok', size: 'lots' }, 422],
      [{ name: 'ok', size: '64Mi', extra: 1 }, 400],
    ] as const) {
      const res = await server.api(VOLUMES, { method: 'POST', json: body });
      assert.equal(res.status, status, `${JSON.stringify(body)}: ${await res.text()}`);
    }
    assert.equal((await server.api(`${VOLUMES}/nope`)).status, 404);
    assert.equal((await server.api(`${VOLUMES}/nope`, { method: 'DELETE' })).status, 404);
    // A claim of a volume that does not exist, and a sandbox with both kinds of volume.
    const missing = await server.api(NS, { method: 'POST', json: withClaim('claims-nothing', 'runc', 'nope') });
    assert.equal(missing.status, 404, await missing.text());
    const both = withClaim('both-kinds', 'runc', 'x');
    both.spec.volumeClaimTemplates = withTemplate('t', 'runc', '64Mi').spec.volumeClaimTemplates;
    assert.equal((await server.api(NS, { method: 'POST', json: both })).status, 422);
    assert.equal((await server.api(`${NS}/claims-nothing`)).status, 404, 'a refused sandbox is not stored');
  });

  test('volumes count in the storage quota; other tenants see none of them', async () => {
    const V1 = '/apis/moat.dev/v1';
    const res = await server.api(`${V1}/users`, { method: 'POST', json: { name: 'vera', role: 'member', quota: { storage: '100Mi' } } });
    const made = await res.text();
    assert.equal(res.status, 201, made);
    const key = (JSON.parse(made) as { key: { key: string } }).key.key;
    const vera = (path: string, init: RequestInit & { json?: unknown } = {}) =>
      fetch(server.url + path, {
        ...init,
        headers: { authorization: `Bearer ${key}`, ...(init.json ? { 'content-type': 'application/json' } : {}) },
        ...(init.json ? { body: JSON.stringify(init.json) } : {}),
      });
    const mine = `${V1}/namespaces/vera/volumes`;
    assert.equal((await vera(mine, { method: 'POST', json: { name: 'a', size: '64Mi' } })).status, 201);
    const over = await vera(mine, { method: 'POST', json: { name: 'b', size: '64Mi' } });
    const why = (await over.json()) as { reason: string; message: string };
    assert.equal(over.status, 403);
    assert.equal(why.reason, 'QuotaExceeded');
    assert.match(why.message, /user "vera": storage limit 100Mi, 64Mi in use, volume "b" needs 64Mi/);
    assert.equal((await vera(`${mine}/b`)).status, 404, 'nothing half-made');
    assert.equal((await vera(VOLUMES)).status, 404, "another tenant's namespace does not exist for vera");
    assert.equal((await vera(`${VOLUMES}/x`, { method: 'DELETE' })).status, 404);
    assert.equal((await vera(`${mine}/a`, { method: 'DELETE' })).status, 204);
    assert.equal((await vera(mine, { method: 'POST', json: { name: 'b', size: '64Mi' } })).status, 201, 'room again');
    assert.equal((await vera(`${mine}/b`, { method: 'DELETE' })).status, 204);
  });

  test('warm pools and claims: each member has its template volume, which goes with it', async () => {
    const storage = { volumeClaimTemplates: [{ metadata: { name: 'workspace' }, spec: { resources: { requests: { storage: '32Mi' } } } }] };
    await create(server, 'sandboxtemplates', templateBody('vt', {}, storage));
    await create(server, 'sandboxwarmpools', poolBody('vp', 'vt', 1));
    await poolReady(server, 'vp', 1);
    const [member] = await poolMembers(server, 'vp');
    const memberName = (member!.metadata as { name: string }).name;
    assert.equal((await volume(server, `workspace-${memberName}`))?.sandbox, memberName);
    await create(server, 'sandboxclaims', claimBody('vc', 'vt'));
    await until('the claimed sandbox', async () => ((await server.api(`${NS}/vc/wait?timeoutSeconds=5`)).status === 200 ? true : undefined));
    await run(server, 'vc', 'echo claimed > /data/x');
    assert.equal((await volume(server, `workspace-${memberName}`))?.sandbox, 'vc', 'the volume follows the adopted sandbox');
    assert.equal((await server.api(`${EXT}/sandboxclaims/vc?wait=true`, { method: 'DELETE' })).status, 200);
    await until('the claimed volume deleted', async () => ((await volume(server, `workspace-${memberName}`)) ? undefined : true));
    assert.equal((await server.api(`${EXT}/sandboxwarmpools/vp`, { method: 'DELETE' })).status, 200);
    await until('the pool volumes deleted', async () => {
      const items = ((await (await server.api(VOLUMES)).json()) as { items: Volume[] }).items;
      return items.some((v) => v.name.startsWith('workspace-')) ? undefined : true;
    });
    // A name too long for a label: shortened with a hash, the same every time.
    const long = `l${'o'.repeat(58)}ng`;
    await ready(server, withTemplate(long, 'runc', '16Mi', 'Retain'), 'runc');
    const items = ((await (await server.api(VOLUMES)).json()) as { items: Volume[] }).items.filter((v) => v.sandbox === long);
    assert.equal(items.length, 1);
    assert.match(items[0]!.name, /^data-loo+-[0-9a-f]{8}$/);
    assert.ok(items[0]!.name.length <= 63);
    await remove(server, long);
    await ready(server, withTemplate(long, 'runc', '16Mi'), 'runc');
    assert.equal((await volume(server, items[0]!.name))?.sandbox, long, 'taken back under the same name');
    await remove(server, long);
    assert.equal(await volume(server, items[0]!.name), undefined);
  });

  for (const { runtime, skip } of testRuntimes()) {
    describe(runtime, { skip }, () => {
      const box = `keep-${runtime}`;
      const vol = `data-${box}`;

      test('data written to /data survives delete-with-retain and re-attach', async () => {
        await ready(server, withTemplate(box, runtime, '64Mi', 'Retain'), runtime);
        const v = await volume(server, vol);
        assert.equal(v?.sandbox, box);
        assert.equal(v?.sizeBytes, 64 * 2 ** 20);
        await run(server, box, 'echo kept-across-sandboxes > /data/note && mkdir -p /data/d && seq 1 1000 > /data/d/nums && sync');
        await remove(server, box);
        const kept = await volume(server, vol);
        assert.equal(kept?.sandbox, null, 'retained and detached');

        // Attached by name to another sandbox, mounted elsewhere.
        const other = `reuse-${runtime}`;
        await ready(server, withClaim(other, runtime, vol, '/srv/shared'), runtime);
        assert.equal((await run(server, other, 'cat /srv/shared/note')).trim(), 'kept-across-sandboxes');
        assert.equal((await run(server, other, 'wc -l < /srv/shared/d/nums')).trim(), '1000');
        await run(server, other, 'echo more >> /srv/shared/note'); // writable by the new sandbox's root
        assert.equal((await volume(server, vol))?.sandbox, other);

        // One attachment at a time.
        const second = await server.api(NS, { method: 'POST', json: withClaim(`second-${runtime}`, runtime, vol) });
        const why = await second.text();
        assert.equal(second.status, 409, why);
        assert.match(why, new RegExp(`attached to sandbox \\\\"${other}\\\\"`));
        const del = await server.api(`${VOLUMES}/${vol}`, { method: 'DELETE' });
        assert.equal(del.status, 409, 'an attached volume is not deleted');

        // A claimed volume outlives the sandbox; the same template name takes it back, as a StatefulSet does.
        await remove(server, other);
        await ready(server, withTemplate(box, runtime, '64Mi'), runtime);
        assert.equal((await run(server, box, 'cat /data/note')).trim(), 'kept-across-sandboxes\nmore');
        await remove(server, box); // default policy Delete: now it goes
        assert.equal(await volume(server, vol), undefined);
      });

      test('the size is a real limit, and the default policy deletes the volume', async () => {
        const name = `full-${runtime}`;
        await ready(server, withTemplate(name, runtime, '32Mi'), runtime);
        const r = await sh(server, name, 'dd if=/dev/zero of=/data/big bs=1M count=64 2>&1; echo rc=$?');
        assert.match(r.stdout, /No space left on device/);
        assert.match(r.stdout, /rc=1/);
        assert.equal((await volume(server, `data-${name}`))?.retain, false);
        await remove(server, name);
        assert.equal(await volume(server, `data-${name}`), undefined);
      });

      test('moat volume create, attach, list, delete', async () => {
        const name = `made-${runtime}`;
        const res = await server.api(VOLUMES, { method: 'POST', json: { name, size: '48Mi' } });
        assert.equal(res.status, 201, await res.text());
        assert.equal((await server.api(VOLUMES, { method: 'POST', json: { name, size: '48Mi' } })).status, 409);
        const list = (await (await server.api(VOLUMES)).json()) as { items: Volume[] };
        assert.ok(list.items.some((v) => v.name === name && v.sandbox === null && v.retain));
        const box = `uses-${runtime}`;
        await ready(server, withClaim(box, runtime, name), runtime);
        assert.match(await run(server, box, 'df -k /data | tail -1'), /\s4[0-9]{4}\s/); // ~48 MiB filesystem
        await run(server, box, 'echo hi > /data/hello');
        await remove(server, box);
        assert.equal((await server.api(`${VOLUMES}/${name}`, { method: 'DELETE' })).status, 204);
        assert.equal(await volume(server, name), undefined);
      });
    });
  }
});
