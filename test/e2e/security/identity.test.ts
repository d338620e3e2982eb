import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import SQLite from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import WebSocket from 'ws';
import { migrations } from '../../../packages/server/src/store/migrations.js';
import { claimBody, poolBody, templateBody } from '../../helpers/extensions.js';
import { runProcess } from '../../helpers/run-process.js';
import { sandboxBody, startTestServer, type TestServer } from '../../helpers/server.js';

const V1 = '/apis/moat.dev/v1';
const SBX = (ns: string) => `/apis/agents.x-k8s.io/v1alpha1/namespaces/${ns}/sandboxes`;
const SECRETS = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/secrets`;
const GATEWAY = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/gateway`;
const VOLUMES = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/volumes`;
const BACKUPS = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/backups`;
const IMAGES = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/images`;
const REGISTRIES = (ns: string) => `/apis/moat.dev/v1/namespaces/${ns}/registries`;
const NO_BACKUP = 'bk-0000000000000000';
const EXT = (ns: string, plural: string) => `/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${ns}/${plural}`;

type Reply = { status: number; body: any };
type Call = (method: string, path: string, json?: unknown) => Promise<Reply>;

/** One kind of request against a namespace; `allowed` tells a served answer from a refusal. */
interface Action {
  /** Method and path below /namespaces/{namespace}/, as in /openapi.json. */
  route: string;
  verb: 'read' | 'write';
  run(call: Call, ns: string, key: string): Promise<Reply>;
  allowed(r: Reply): boolean;
}

const ok =
  (...codes: number[]) =>
  (r: Reply) =>
    codes.includes(r.status);
const missing = (what: RegExp) => (r: Reply) => r.status === 404 && what.test(r.body.message);
const emptyTar = Buffer.alloc(1024);

function objectActions(plural: string, fixture: string, body: (name: string) => unknown): Action[] {
  const generated = () => ({ ...(body('') as { metadata: object }), metadata: { generateName: 'm-' } });
  return [
    { route: `GET ${plural}`, verb: 'read', run: (c, ns) => c('GET', EXT(ns, plural)), allowed: ok(200) },
    { route: `POST ${plural}`, verb: 'write', run: (c, ns) => c('POST', EXT(ns, plural), generated()), allowed: ok(201) },
    { route: `GET ${plural}/{name}`, verb: 'read', run: (c, ns) => c('GET', `${EXT(ns, plural)}/${fixture}`), allowed: ok(200) },
    { route: `PUT ${plural}/{name}`, verb: 'write', run: (c, ns) => c('PUT', `${EXT(ns, plural)}/${fixture}`, body(fixture)), allowed: ok(200) },
    { route: `DELETE ${plural}/{name}`, verb: 'write', run: (c, ns) => c('DELETE', `${EXT(ns, plural)}/ghost`), allowed: missing(/"ghost" not found/) },
    {
      route: `GET ${plural}/{name}/wait`,
      verb: 'read',
      run: (c, ns) => c('GET', `${EXT(ns, plural)}/${fixture}/wait?timeoutSeconds=0`),
      allowed: ok(200, 408),
    },
  ];
}

const files = (ns: string, q: string) => `${SBX(ns)}/box/files${q}`;

/** Every namespaced route of the API (the route-coverage test below keeps this list complete). */
const ACTIONS: Action[] = [
  { route: 'GET sandboxes', verb: 'read', run: (c, ns) => c('GET', SBX(ns)), allowed: ok(200) },
  {
    route: 'POST sandboxes',
    verb: 'write',
    run: (c, ns) => c('POST', SBX(ns), sandboxBody('new', { image: 'no-such-image' })),
    allowed: (r) => r.body.reason === 'ImageNotFound',
  },
  { route: 'GET sandboxes/{name}', verb: 'read', run: (c, ns) => c('GET', `${SBX(ns)}/box`), allowed: ok(200) },
  { route: 'DELETE sandboxes/{name}', verb: 'write', run: (c, ns) => c('DELETE', `${SBX(ns)}/ghost`), allowed: missing(/sandbox "ghost" not found/) },
  { route: 'GET sandboxes/{name}/wait', verb: 'read', run: (c, ns) => c('GET', `${SBX(ns)}/box/wait?timeoutSeconds=5`), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/events', verb: 'read', run: (c, ns) => c('GET', `${SBX(ns)}/box/events`), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/egress', verb: 'read', run: (c, ns) => c('GET', `${SBX(ns)}/box/egress`), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/logs', verb: 'read', run: (c, ns) => c('GET', `${SBX(ns)}/box/logs`), allowed: ok(200) },
  { route: 'POST sandboxes/{name}/exec', verb: 'write', run: (c, ns) => c('POST', `${SBX(ns)}/box/exec`, { command: ['true'] }), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/exec/ws', verb: 'write', run: (_c, ns, key) => wsStatus(ns, key), allowed: ok(101) },
  { route: 'GET sandboxes/{name}/files/content', verb: 'read', run: (c, ns) => c('GET', files(ns, '/content?path=/etc/hostname')), allowed: ok(200) },
  { route: 'PUT sandboxes/{name}/files/content', verb: 'write', run: (c, ns) => c('PUT', files(ns, '/content?path=/tmp/m'), 'x'), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/files/list', verb: 'read', run: (c, ns) => c('GET', files(ns, '/list?path=/etc')), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/files/stat', verb: 'read', run: (c, ns) => c('GET', files(ns, '/stat?path=/etc')), allowed: ok(200) },
  { route: 'POST sandboxes/{name}/files/mkdir', verb: 'write', run: (c, ns) => c('POST', files(ns, '/mkdir?path=/tmp/d&parents=true')), allowed: ok(201) },
  { route: 'DELETE sandboxes/{name}/files', verb: 'write', run: (c, ns) => c('DELETE', files(ns, '?path=/tmp/nope')), allowed: missing(/no such file/) },
  {
    route: 'POST sandboxes/{name}/files/rename',
    verb: 'write',
    run: (c, ns) => c('POST', files(ns, '/rename'), { from: '/tmp/nope', to: '/tmp/nope2' }),
    allowed: missing(/no such file/),
  },
  { route: 'GET sandboxes/{name}/files/archive', verb: 'read', run: (c, ns) => c('GET', files(ns, '/archive?path=/etc/default')), allowed: ok(200) },
  { route: 'PUT sandboxes/{name}/files/archive', verb: 'write', run: (c, ns) => c('PUT', files(ns, '/archive?path=/tmp'), emptyTar), allowed: ok(200) },
  { route: 'GET sandboxes/{name}/ports/{port}', verb: 'write', run: (c, ns) => c('GET', `${SBX(ns)}/box/ports/9/`), allowed: ok(502) },
  ...(['pause', 'resume', 'hibernate', 'wake'] as const).map((a): Action => ({
    route: `POST sandboxes/{name}/${a}`,
    verb: 'write',
    run: (c, ns) => c('POST', `${SBX(ns)}/ghost/${a}`),
    allowed: missing(/sandbox "ghost" not found/),
  })),
  {
    route: 'POST sandboxes/{name}/extend',
    verb: 'write',
    run: (c, ns) => c('POST', `${SBX(ns)}/ghost/extend`, { ttlSeconds: 60 }),
    allowed: missing(/sandbox "ghost" not found/),
  },
  { route: 'GET volumes', verb: 'read', run: (c, ns) => c('GET', VOLUMES(ns)), allowed: ok(200) },
  {
    route: 'POST volumes',
    verb: 'write',
    run: (c, ns) => c('POST', VOLUMES(ns), { name: `v-${Math.random().toString(36).slice(2, 8)}`, size: '16Mi' }),
    allowed: ok(201),
  },
  { route: 'GET volumes/{name}', verb: 'read', run: (c, ns) => c('GET', `${VOLUMES(ns)}/vol`), allowed: ok(200) },
  { route: 'DELETE volumes/{name}', verb: 'write', run: (c, ns) => c('DELETE', `${VOLUMES(ns)}/ghost`), allowed: missing(/volume "ghost" not found/) },
  { route: 'GET backups', verb: 'read', run: (c, ns) => c('GET', BACKUPS(ns)), allowed: ok(200) },
  { route: 'POST backups', verb: 'write', run: (c, ns) => c('POST', BACKUPS(ns), { volume: 'ghost' }), allowed: missing(/volume "ghost" not found/) },
  {
    route: 'POST volumes/{name}/backups',
    verb: 'write',
    run: (c, ns) => c('POST', `${VOLUMES(ns)}/ghost/backups`),
    allowed: missing(/volume "ghost" not found/),
  },
  { route: 'GET backups/{id}', verb: 'read', run: (c, ns) => c('GET', `${BACKUPS(ns)}/${NO_BACKUP}`), allowed: missing(/backup "bk-0+" not found/) },
  { route: 'DELETE backups/{id}', verb: 'write', run: (c, ns) => c('DELETE', `${BACKUPS(ns)}/${NO_BACKUP}`), allowed: missing(/backup "bk-0+" not found/) },
  {
    route: 'POST backups/{id}/restore',
    verb: 'write',
    run: (c, ns) => c('POST', `${BACKUPS(ns)}/${NO_BACKUP}/restore`, { volume: 'r' }),
    allowed: missing(/backup "bk-0+" not found/),
  },
  { route: 'GET secrets', verb: 'read', run: (c, ns) => c('GET', SECRETS(ns)), allowed: ok(200) },
  {
    route: 'POST secrets',
    verb: 'write',
    run: (c, ns) => c('POST', SECRETS(ns), { name: `s-${Math.random().toString(36).slice(2, 8)}`, value: 'v' }),
    allowed: ok(201),
  },
  { route: 'GET secrets/{name}', verb: 'read', run: (c, ns) => c('GET', `${SECRETS(ns)}/sec`), allowed: ok(200) },
  { route: 'PUT secrets/{name}', verb: 'write', run: (c, ns) => c('PUT', `${SECRETS(ns)}/sec`, { value: 'v2' }), allowed: ok(200) },
  { route: 'DELETE secrets/{name}', verb: 'write', run: (c, ns) => c('DELETE', `${SECRETS(ns)}/ghost`), allowed: missing(/secret "ghost" not found/) },
  { route: 'GET gateway', verb: 'read', run: (c, ns) => c('GET', GATEWAY(ns)), allowed: ok(200) },
  { route: 'PUT gateway', verb: 'write', run: (c, ns) => c('PUT', GATEWAY(ns), { models: ['m'] }), allowed: ok(200) },
  {
    route: 'DELETE gateway',
    verb: 'write',
    // Served: 204, then the fixture is put back for the next case.
    run: async (c, ns) => {
      const r = await c('DELETE', GATEWAY(ns));
      if (r.status === 204) await c('PUT', GATEWAY(ns), { models: ['m'] });
      return r;
    },
    allowed: ok(204),
  },
  { route: 'GET gateway/usage', verb: 'read', run: (c, ns) => c('GET', `${GATEWAY(ns)}/usage`), allowed: ok(200) },
  { route: 'GET images', verb: 'read', run: (c, ns) => c('GET', IMAGES(ns)), allowed: ok(200) },
  { route: 'GET images/{name}', verb: 'read', run: (c, ns) => c('GET', `${IMAGES(ns)}/ghost`), allowed: missing(/image "ghost:latest" not found/) },
  { route: 'DELETE images/{name}', verb: 'write', run: (c, ns) => c('DELETE', `${IMAGES(ns)}/ghost`), allowed: missing(/image "ghost:latest" not found/) },
  {
    route: 'POST images/{name}/publish',
    verb: 'write',
    run: (c, ns) => c('POST', `${IMAGES(ns)}/ghost/publish`, { public: true }),
    // Publishing is the admins' alone: a member in their own namespace is told so.
    allowed: (r) => missing(/image "ghost:latest" not found/)(r) || (r.status === 403 && /admin/.test(r.body.message)),
  },
  {
    route: 'POST images/pull',
    verb: 'write',
    run: (c, ns) => c('POST', `${IMAGES(ns)}/pull`, { reference: 'UPPER/case' }),
    allowed: (r) => r.status === 400 && r.body.reason === 'InvalidImageName',
  },
  { route: 'POST images/import', verb: 'write', run: (c, ns) => c('POST', `${IMAGES(ns)}/import`, emptyTar), allowed: (r) => r.body.reason === 'BadArchive' },
  {
    route: 'POST images/build',
    verb: 'write',
    run: (c, ns) => c('POST', `${IMAGES(ns)}/build?tag=t`, emptyTar),
    allowed: (r) => r.body.reason === 'BuildFailed',
  },
  { route: 'GET registries', verb: 'read', run: (c, ns) => c('GET', REGISTRIES(ns)), allowed: ok(200) },
  {
    route: 'POST registries',
    verb: 'write',
    // A docker config's logins are stored as they are (not checked against the registry): nothing leaves the host.
    run: (c, ns) =>
      c('POST', REGISTRIES(ns), { dockerConfig: JSON.stringify({ auths: { 'registry.example': { auth: Buffer.from('u:p').toString('base64') } } }) }),
    allowed: ok(201),
  },
  {
    route: 'DELETE registries/{registry}',
    verb: 'write',
    run: (c, ns) => c('DELETE', `${REGISTRIES(ns)}/ghost.example`),
    allowed: missing(/no login for registry ghost.example/),
  },
  ...objectActions('sandboxtemplates', 'tpl', (name) => templateBody(name)),
  ...objectActions('sandboxclaims', 'clm', (name) => claimBody(name, 'none')),
  ...objectActions('sandboxwarmpools', 'pool', (name) => poolBody(name, 'tpl', 0)),
];

let server: TestServer;

async function wsStatus(ns: string, key: string): Promise<Reply> {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}${SBX(ns)}/box/exec/ws`, { headers: { authorization: `Bearer ${key}` } });
  return new Promise((resolve) => {
    ws.once('open', () => {
      ws.close();
      resolve({ status: 101, body: {} });
    });
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
  });
}

function caller(key: string): Call {
  return async (method, path, json) => {
    const raw = typeof json === 'string' || Buffer.isBuffer(json);
    const res = await fetch(server.url + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(json === undefined ? {} : { 'content-type': raw ? 'application/octet-stream' : 'application/json' }) },
      ...(json === undefined ? {} : { body: raw ? (json as string | Uint8Array as BodyInit) : JSON.stringify(json) }),
    });
    const text = await res.text();
    let body: any = text;
    try {
      body = JSON.parse(text);
    } catch {
      /* not JSON: logs, files, tar */
    }
    return { status: res.status, body };
  };
}

describe('identity, tenancy and authorization', () => {
  const keys: Record<string, string> = {};
  let admin: Call;

  async function must(call: Call, method: string, path: string, json: unknown, status: number) {
    const r = await call(method, path, json);
    assert.equal(r.status, status, `${method} ${path}: ${JSON.stringify(r.body)}`);
    return r.body;
  }

  before(async () => {
    server = await startTestServer();
    admin = caller(server.adminKey);
    keys.admin = server.adminKey;
    for (const [name, role] of [
      ['alice', 'member'],
      ['bob', 'member'],
      ['vic', 'viewer'],
    ]) {
      keys[name] = (await must(admin, 'POST', `${V1}/users`, { name, role }, 201)).key.key;
    }
    await must(caller(keys.alice!), 'POST', `${V1}/users/alice/agents`, { name: 'coder' }, 201);
    keys.coder = (await must(caller(keys.alice!), 'POST', `${V1}/users/alice/keys`, { name: 'for coder', agent: 'coder' }, 201)).key;
    // The same objects in every namespace the matrix targets; the admin makes them (a viewer cannot).
    await Promise.all(
      ['alice', 'alice-coder', 'vic'].map(async (ns) => {
        await must(admin, 'POST', SBX(ns), sandboxBody('box'), 201);
        await must(admin, 'POST', EXT(ns, 'sandboxtemplates'), templateBody('tpl'), 201);
        await must(admin, 'POST', EXT(ns, 'sandboxclaims'), claimBody('clm', 'none'), 201);
        await must(admin, 'POST', EXT(ns, 'sandboxwarmpools'), poolBody('pool', 'tpl', 0), 201);
        await must(admin, 'POST', SECRETS(ns), { name: 'sec', value: 'v' }, 201);
        await must(admin, 'PUT', GATEWAY(ns), { models: ['m'] }, 200);
        await must(admin, 'POST', VOLUMES(ns), { name: 'vol', size: '16Mi' }, 201);
        await must(admin, 'GET', `${SBX(ns)}/box/wait?timeoutSeconds=120`, undefined, 200);
      }),
    );
  });
  after(() => server.close());

  // role × owner: who asks, in whose namespace, and what they may do there.
  const CASES: [who: string, ns: string, may: 'all' | 'read' | 'nothing'][] = [
    ['admin', 'alice', 'all'],
    ['admin', 'vic', 'all'],
    ['alice', 'alice', 'all'],
    ['alice', 'alice-coder', 'all'],
    ['alice', 'vic', 'nothing'],
    ['bob', 'alice', 'nothing'],
    ['bob', 'alice-coder', 'nothing'],
    ['vic', 'vic', 'read'],
    ['vic', 'alice', 'nothing'],
    ['coder', 'alice-coder', 'all'],
    ['coder', 'alice', 'nothing'],
  ];

  for (const [who, ns, may] of CASES) {
    test(`namespace matrix: ${who} in ${ns} may do ${may}`, async () => {
      const call = caller(keys[who]!);
      for (const a of ACTIONS) {
        const r = await a.run(call, ns, keys[who]!);
        const what = `${who} ${a.route} in ${ns}: ${r.status} ${JSON.stringify(r.body).slice(0, 300)}`;
        if (may === 'all' || (may === 'read' && a.verb === 'read')) assert.ok(a.allowed(r), `should be served: ${what}`);
        else if (may === 'read') assert.ok(r.status === 403 && r.body.reason === 'Forbidden' && /viewer/.test(r.body.message), `should be 403: ${what}`);
        else assert.ok(r.status === 404 && r.body.message === `namespace "${ns}" not found`, `should look missing: ${what}`);
      }
    });
  }

  test('every namespaced route is in the matrix', async () => {
    const doc = (await (await admin('GET', '/openapi.json')).body) as { paths: Record<string, Record<string, unknown>> };
    const routes = Object.entries(doc.paths).flatMap(([path, ops]) => {
      const below = path.split('/namespaces/{namespace}/')[1];
      return below
        ? Object.keys(ops)
            .filter((m) => m !== 'head')
            .map((m) => `${m.toUpperCase()} ${below}`)
        : [];
    });
    const inMatrix = new Set(ACTIONS.map((a) => a.route));
    assert.deepEqual(
      routes.filter((r) => !inMatrix.has(r) && !r.endsWith('/{*}')),
      [],
    );
    assert.ok(routes.length >= 30, `${routes.length} routes`);
  });

  test("another tenant's object and a missing one give the same answer", async () => {
    const bob = caller(keys.bob!);
    const theirs = await bob('GET', `${SBX('alice')}/box`);
    const nobody = await bob('GET', `${SBX('nobody')}/box`);
    assert.equal(theirs.status, 404);
    assert.deepEqual({ ...theirs.body, message: '' }, { ...nobody.body, message: '' });
    assert.equal(theirs.body.message.replace('alice', 'X'), nobody.body.message.replace('nobody', 'X'));
  });

  test('lists over all namespaces show only what the key may see', async () => {
    const names = async (who: string, path: string) =>
      ((await caller(keys[who]!)('GET', path)).body.items as { metadata: { namespace: string } }[]).map((o) => o.metadata.namespace).sort();
    const all = '/apis/agents.x-k8s.io/v1alpha1/sandboxes';
    assert.deepEqual(await names('alice', all), ['alice', 'alice-coder']);
    assert.deepEqual(await names('coder', all), ['alice-coder']);
    assert.deepEqual(await names('bob', all), []);
    assert.deepEqual(await names('vic', all), ['vic']);
    assert.deepEqual(await names('admin', all), ['alice', 'alice-coder', 'vic']);
    const pools = '/apis/extensions.agents.x-k8s.io/v1alpha1/sandboxwarmpools';
    assert.ok((await names('bob', pools)).every((ns) => ns === 'bob'));
  });

  test('objects can only be created in a namespace an agent owns', async () => {
    const r = await admin('POST', EXT('nobody', 'sandboxtemplates'), templateBody('t'));
    assert.equal(r.status, 404);
    assert.match(r.body.message, /namespace "nobody" not found.*moat agents create/);
  });

  // Identity routes: [action, verb, needs admin]
  const USER_ACTIONS: [string, (c: Call, user: string) => Promise<Reply>, 'read' | 'write' | 'admin', (r: Reply) => boolean][] = [
    ['get user', (c, u) => c('GET', `${V1}/users/${u}`), 'read', ok(200)],
    ['change quota', (c, u) => c('PATCH', `${V1}/users/${u}`, { quota: {} }), 'admin', ok(200)],
    ['list agents', (c, u) => c('GET', `${V1}/users/${u}/agents`), 'read', ok(200)],
    ['create agent', (c, u) => c('POST', `${V1}/users/${u}/agents`, { name: 'tmp' }), 'write', ok(201)],
    ['get agent', (c, u) => c('GET', `${V1}/users/${u}/agents/default`), 'read', ok(200)],
    ['agent quota', (c, u) => c('PATCH', `${V1}/users/${u}/agents/default`, { quota: {} }), 'admin', ok(200)],
    ['delete agent', (c, u) => c('DELETE', `${V1}/users/${u}/agents/tmp`), 'write', ok(204)],
    ['list keys', (c, u) => c('GET', `${V1}/users/${u}/keys`), 'read', ok(200)],
    ['create key', (c, u) => c('POST', `${V1}/users/${u}/keys`, { name: 'k' }), 'write', ok(201)],
    ['revoke key', (c, u) => c('DELETE', `${V1}/users/${u}/keys/000000000000`), 'write', missing(/API key 000000000000/)],
    ['delete user', (c, u) => c('DELETE', `${V1}/users/${u}-nobody`), 'admin', missing(/user ".*-nobody" not found/)],
  ];

  const USER_CASES: [who: string, target: string, may: 'admin' | 'self' | 'read' | 'nothing'][] = [
    ['admin', 'bob', 'admin'],
    ['alice', 'alice', 'self'],
    ['alice', 'bob', 'nothing'],
    ['vic', 'vic', 'read'],
    ['vic', 'alice', 'nothing'],
    ['coder', 'alice', 'read'],
  ];

  for (const [who, target, may] of USER_CASES) {
    test(`identity matrix: ${who} on user ${target} may do ${may}`, async () => {
      const call = caller(keys[who]!);
      for (const [name, run, needs, allowed] of USER_ACTIONS) {
        const r = await run(call, target);
        const what = `${who} ${name} of ${target}: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`;
        // "delete user" addresses another (missing) user; it is refused as an admin action before the lookup.
        const served = may === 'admin' || (may === 'self' && needs !== 'admin') || (may === 'read' && needs === 'read');
        if (served) assert.ok(allowed(r), `should be served: ${what}`);
        else if (may === 'nothing' && name !== 'delete user')
          assert.ok(r.status === 404 && r.body.message === `user "${target}" not found`, `should look missing: ${what}`);
        else assert.ok(r.status === 403 || r.status === 404, `should be refused: ${what}`);
      }
      const users = await call('GET', `${V1}/users`);
      assert.equal(users.status, who === 'admin' ? 200 : 403);
      const mk = await call('POST', `${V1}/users`, { name: `made-by-${who}`, role: 'admin' });
      assert.equal(mk.status, who === 'admin' ? 201 : 403, JSON.stringify(mk.body));
    });
  }

  test('keys: listed without secrets, stored hashed, expiring and revocable', async () => {
    const alice = caller(keys.alice!);
    const made = await must(alice, 'POST', `${V1}/users/alice/keys`, { name: 'short', expiresAt: new Date(Date.now() + 1500).toISOString() }, 201);
    assert.match(made.key, /^moat_[0-9a-f]{12}_/);
    const listed = (await must(alice, 'GET', `${V1}/users/alice/keys`, undefined, 200)).items as Record<string, unknown>[];
    assert.ok(listed.some((k) => k.id === made.id && k.expiresAt));
    assert.ok(listed.every((k) => !('key' in k) && !('hash' in k)));
    const db = new SQLite(join(server.dataDir, 'moat.db'), { readonly: true });
    const dump = JSON.stringify(db.prepare('SELECT * FROM api_keys').all());
    db.close();
    assert.ok(!dump.includes(made.key) && !dump.includes(keys.alice!), 'only hashes are stored');

    const short = caller(made.key);
    assert.equal((await short('GET', `${V1}/whoami`)).status, 200);
    await sleep(1600);
    const expired = await short('GET', `${V1}/whoami`);
    assert.equal(expired.status, 401);
    assert.match(expired.body.message, /expired/);
    assert.equal((await alice('POST', `${V1}/users/alice/keys`, { name: 'past', expiresAt: '2000-01-01T00:00:00Z' })).status, 400);

    const other = await must(alice, 'POST', `${V1}/users/alice/keys`, { name: 'to revoke' }, 201);
    assert.equal((await caller(other.key)('GET', `${V1}/whoami`)).status, 200);
    const revoked = await must(alice, 'DELETE', `${V1}/users/alice/keys/${other.id}`, undefined, 200);
    assert.ok(revoked.revokedAt);
    assert.equal((await caller(other.key)('GET', `${V1}/whoami`)).status, 401);
  });

  test('whoami names user, role, agent and namespaces', async () => {
    assert.deepEqual((await caller(keys.coder!)('GET', `${V1}/whoami`)).body.namespaces, ['alice-coder']);
    const me = (await caller(keys.alice!)('GET', `${V1}/whoami`)).body;
    assert.equal(me.role, 'member');
    assert.deepEqual(me.namespaces.sort(), ['alice', 'alice-coder']);
  });

  test('quotas refuse with a clear message and store nothing; concurrent creates cannot overshoot', async () => {
    const quinn = caller((await must(admin, 'POST', `${V1}/users`, { name: 'quinn', role: 'member', quota: { sandboxes: 1, memory: '600Mi' } }, 201)).key.key);
    await must(quinn, 'POST', SBX('quinn'), sandboxBody('q1'), 201);
    const second = await quinn('POST', SBX('quinn'), sandboxBody('q2'));
    assert.equal(second.status, 403);
    assert.equal(second.body.reason, 'QuotaExceeded');
    assert.match(second.body.message, /user "quinn": sandboxes limit 1, 1 in use/);
    assert.equal((await quinn('GET', `${SBX('quinn')}/q2`)).status, 404, 'nothing half-created');

    await must(admin, 'PATCH', `${V1}/users/quinn`, { quota: { sandboxes: 3, memory: '600Mi' } }, 200);
    const big = await quinn('POST', SBX('quinn'), sandboxBody('q3', { limits: { memory: '256Mi' } }));
    assert.equal(big.status, 403);
    assert.match(big.body.message, /memory limit 600Mi, 512Mi in use, this sandbox needs 256Mi/);

    await must(quinn, 'POST', `${V1}/users/quinn/agents`, { name: 'small' }, 201);
    assert.equal((await quinn('PATCH', `${V1}/users/quinn/agents/small`, { quota: { cpu: '500m' } })).status, 403, 'members do not set quotas');
    await must(admin, 'PATCH', `${V1}/users/quinn/agents/small`, { quota: { cpu: '500m' } }, 200);
    await must(admin, 'PATCH', `${V1}/users/quinn`, { quota: { sandboxes: 2 } }, 200);
    const cpu = await quinn('POST', SBX('quinn-small'), sandboxBody('s1'));
    assert.equal(cpu.status, 403);
    assert.match(cpu.body.message, /agent "small" of user "quinn": cpu limit 0.5, 0 in use, this sandbox needs 1/);

    const racing = await Promise.all(['r1', 'r2', 'r3'].map((n) => quinn('POST', SBX('quinn-small'), sandboxBody(n, { limits: { cpu: '250m' } }))));
    assert.deepEqual(racing.map((r) => r.status).sort(), [201, 403, 403], 'one slot left for user quinn');
    assert.equal((await must(quinn, 'GET', '/apis/agents.x-k8s.io/v1alpha1/sandboxes', undefined, 200)).items.length, 2);
    assert.equal((await admin('PATCH', `${V1}/users/quinn`, { quota: { memory: 'lots' } })).status, 422);
  });

  test('a user who owns objects cannot be deleted; one who owns nothing goes with their keys', async () => {
    const r = await admin('DELETE', `${V1}/users/alice`);
    assert.equal(r.status, 409);
    assert.match(r.body.message, /still holds/);
    const temp = await must(admin, 'POST', `${V1}/users`, { name: 'temp', role: 'member' }, 201);
    await must(admin, 'DELETE', `${V1}/users/temp`, undefined, 204);
    assert.equal((await caller(temp.key.key)('GET', `${V1}/whoami`)).status, 401);
  });
});

describe('moat login, users, agents and keys (the built CLI)', () => {
  const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');
  let work: string;
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
    work = await mkdtemp(join(tmpdir(), 'moat-identity-cli-'));
  });
  after(async () => {
    await server.close();
    await rm(work, { recursive: true, force: true });
  });

  function moat(args: string[], opts: { key?: string; input?: string } = {}) {
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '',
      HOME: work,
      MOAT_CONFIG: join(work, 'config.json'),
      MOAT_URL: server.url,
      ...(opts.key ? { MOAT_API_KEY: opts.key } : {}),
    };
    return runProcess(process.execPath, [CLI, ...args], { env, input: opts.input });
  }

  test('the admin key creates a user; -o key prints only the key, which then logs in', async () => {
    const made = await moat(['users', 'create', 'carol', '--role', 'member', '--sandboxes', '2', '-o', 'key'], { key: server.adminKey });
    assert.equal(made.code, 0, made.stderr);
    assert.match(made.stdout, /^moat_[0-9a-f]{12}_\S+\n$/);
    const key = made.stdout.trim();

    const login = await moat(['login'], { input: `${key}\n` });
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stdout, /as carol, role member, namespace carol/);
    const saved = JSON.parse(await readFile(join(work, 'config.json'), 'utf8'));
    assert.deepEqual(saved, { url: server.url, apiKey: key, namespace: 'carol' });
    assert.equal((await moat(['login'], { input: 'moat_000000000000_nope\n' })).code, 1, 'a bad key is refused, not saved');

    const agent = await moat(['agents', 'create', 'bot']);
    assert.equal(agent.stdout, 'carol-bot\n', agent.stderr);
    const agentKey = await moat(['keys', 'create', 'bot-key', '--agent', 'bot', '--expires-in', '1d', '-o', 'key']);
    assert.match(agentKey.stdout, /^moat_/);
    const list = await moat(['keys', 'list']);
    assert.match(list.stdout, /bot-key\s+bot\s+active/);
    assert.ok(!list.stdout.includes(agentKey.stdout.trim()));
    const id = agentKey.stdout.slice(5, 17);
    assert.equal((await moat(['keys', 'revoke', id])).code, 0);
    assert.match((await moat(['keys', 'list'])).stdout, /bot-key\s+bot\s+revoked/);

    const denied = await moat(['users', 'list']);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /only an admin/);
    const users = await moat(['users', 'list', '-o', 'json'], { key: server.adminKey });
    assert.deepEqual(
      JSON.parse(users.stdout).items.map((u: { name: string }) => u.name),
      ['admin', 'carol'],
    );
    assert.equal((await moat(['users', 'set', 'carol', '--role', 'viewer'], { key: server.adminKey })).code, 0);
    assert.match((await moat(['agents', 'create', 'other'])).stderr, /viewer/);
  });
});

describe('upgrading a data dir from before users existed', () => {
  test('the old admin key keeps working and owns namespace default; its user is an admin', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'moat-upgrade-'));
    try {
      // The store as the first three migrations left it, with the key `moat up` printed then.
      const old = new Kysely<any>({ dialect: new SqliteDialect({ database: new SQLite(join(dir, 'moat.db')) }) });
      const before = Object.fromEntries(Object.entries(migrations('sqlite')).filter(([name]) => name < '0004'));
      assert.equal(Object.keys(before).length, 3);
      const { error } = await new Migrator({ db: old, provider: { getMigrations: async () => before } }).migrateToLatest();
      assert.ifError(error);
      const key = `moat_0123456789ab_${randomBytes(32).toString('base64url')}`;
      await old
        .insertInto('api_keys')
        .values({
          id: '0123456789ab',
          name: 'admin (first start)',
          hash: createHash('sha256').update(key).digest('hex'),
          user: 'admin',
          role: 'admin',
          created_at: new Date().toISOString(),
          expires_at: null,
          revoked_at: null,
        })
        .execute();
      await old.destroy();
      await writeFile(join(dir, 'admin-key'), key + '\n', { mode: 0o600 });

      const upgraded = await startTestServer({ dataDir: dir });
      try {
        assert.equal(upgraded.adminKey, key);
        const me = (await (await upgraded.api('/apis/moat.dev/v1/whoami')).json()) as { user: string; role: string; namespace: string };
        assert.deepEqual({ user: me.user, role: me.role, namespace: me.namespace }, { user: 'admin', role: 'admin', namespace: 'default' });
        assert.equal((await upgraded.api(`${V1}/users`, { method: 'POST', json: { name: 'dana', role: 'member' } })).status, 201);
      } finally {
        await upgraded.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
