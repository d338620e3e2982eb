import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import type { EgressPolicy } from '@moat/core';
import { EgressProxy, addressClass, isPublicAddress, type EgressLimits, type EgressProxyOptions, type EgressRecord, type EgressSandbox } from '../src/index.js';

const exec = promisify(execFile);
/** Runs a command to completion; never rejects on a non-zero exit. */
const run = async (cmd: string, args: string[]) => {
  try {
    const { stdout, stderr } = await exec(cmd, args);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? String(e) };
  }
};
const hasCurl = (await run('sh', ['-c', 'command -v curl'])).code === 0;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const portOf = (s: Server) => (s.address() as { port: number }).port;
const listen = async <S extends Server>(s: S) => {
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return s;
};

// Upstreams on loopback, reached by names the proxy is told to pin there.
let dir: string;
let cert: Buffer;
let web: http.Server;
let secure: https.Server;
let echo: Server;
let sink: Server;
let closedPort: number;
const firstChunkSeen: (() => void)[] = [];
const dripRelease: (() => void)[] = [];

const PINNED = ['api.test', 'other.test', 'a.example.test', 'deep.a.example.test', 'example.test', 'secure.test', 'tcp.test', 'down.test'];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'moat-egress-test-'));
  const made = await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=secure.test',
    '-addext',
    'subjectAltName=DNS:secure.test',
    '-keyout',
    join(dir, 'key.pem'),
    '-out',
    join(dir, 'cert.pem'),
  ]);
  assert.equal(made.code, 0, made.stderr);
  cert = await readFile(join(dir, 'cert.pem'));

  web = await listen(
    http.createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      if (url.pathname === '/bytes') {
        const n = Number(url.searchParams.get('n'));
        res.writeHead(200, { 'Content-Length': n, 'Proxy-Authenticate': 'Basic', 'X-Upstream': 'yes' });
        const chunk = Buffer.alloc(64 * 1024, 7);
        let left = n;
        const pump = () => {
          while (left > 0) {
            const c = chunk.subarray(0, Math.min(left, chunk.length));
            left -= c.length;
            if (!res.write(c)) return void res.once('drain', pump);
          }
          res.end();
        };
        return pump();
      }
      if (url.pathname === '/drip') {
        res.writeHead(200);
        res.write('first;');
        return void dripRelease.push(() => res.end('rest'));
      }
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => {
        if (!parts.length) firstChunkSeen.shift()?.();
        parts.push(d);
      });
      req.on('end', () => {
        const body = Buffer.concat(parts);
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ method: req.method, url: req.url, rawHeaders: req.rawHeaders, length: body.length, sha: sha(body) }));
      });
    }),
  );
  secure = await listen(https.createServer({ key: await readFile(join(dir, 'key.pem')), cert }, (_req, res) => res.end('secure hello')));
  echo = await listen(createServer((s) => s.pipe(s)));
  // Counts what it receives, answers with the count once the client is done.
  sink = await listen(
    createServer({ allowHalfOpen: true }, (s) => {
      let n = 0;
      s.on('data', (d: Buffer) => (n += d.length));
      s.on('end', () => s.end(`${n}\n`));
    }),
  );
  const tmp = await listen(createServer());
  closedPort = portOf(tmp);
  tmp.close();
});

after(async () => {
  web?.closeAllConnections();
  secure?.closeAllConnections();
  for (const s of [web, secure, echo, sink]) s?.close();
  await rm(dir, { recursive: true, force: true });
});

interface Started {
  proxy: EgressProxy;
  records: EgressRecord[];
  sandbox: EgressSandbox;
  /** Resolves with the next record. */
  nextRecord(): Promise<EgressRecord>;
}

async function startProxy(
  t: TestContext,
  policy: EgressPolicy,
  extra: Partial<EgressProxyOptions> & { limits?: Partial<EgressLimits>; unknown?: boolean } = {},
): Promise<Started> {
  const sandbox: EgressSandbox = { uid: 'uid-1', name: 'agent', namespace: 'team', owner: 'alice', policy, ...(extra.limits ? { limits: extra.limits } : {}) };
  const records: EgressRecord[] = [];
  const waiters: ((r: EgressRecord) => void)[] = [];
  const proxy = await EgressProxy.start({
    identify: (addr) => (addr === '127.0.0.1' && !extra.unknown ? sandbox : undefined),
    onDecision: (r) => {
      records.push(r);
      waiters.shift()?.(r);
    },
    pinnedHosts: Object.fromEntries(PINNED.map((h) => [h, '127.0.0.1'])),
    lookup: async (host) => {
      if (host === 'rebind.test') return ['127.0.0.1'];
      if (host === 'mixed.test') return ['10.0.0.1', '169.254.169.254', '::1'];
      throw Object.assign(new Error(`no such host ${host}`), { code: 'ENOTFOUND' });
    },
    ...extra,
  });
  t.after(() => proxy.close());
  return { proxy, records, sandbox, nextRecord: () => new Promise((r) => waiters.push(r)) };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  reused: boolean;
}

/** A plain-HTTP request through the proxy, the way HTTP_PROXY clients send it. */
function viaProxy(
  proxy: EgressProxy,
  url: string,
  opts: { method?: string; body?: Buffer; headers?: Record<string, string>; agent?: http.Agent } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: proxy.port, path: url, method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), reused: req.reusedSocket }));
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Opens a CONNECT tunnel; the socket is ready for the tunnelled protocol when status is 200. */
async function tunnel(proxy: EgressProxy, authority: string): Promise<{ status: number; head: string; body: string; socket: Socket }> {
  const socket = connect(proxy.port, '127.0.0.1');
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  let buf = Buffer.alloc(0);
  for (;;) {
    const [d] = (await once(socket, 'data')) as [Buffer];
    buf = Buffer.concat([buf, d]);
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) continue;
    const head = buf.subarray(0, end).toString();
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
    let body = buf.subarray(end + 4);
    const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
    while (body.length < len) body = Buffer.concat([body, ((await once(socket, 'data')) as [Buffer])[0]]);
    return { status, head, body: body.toString(), socket };
  }
}

async function roundTrip(socket: Socket, data: Buffer): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  const done = new Promise<void>((resolve) =>
    socket.on('data', (d: Buffer) => {
      parts.push(d);
      if ((n += d.length) >= data.length) resolve();
    }),
  );
  socket.write(data);
  await done;
  return Buffer.concat(parts);
}

const webUrl = (host: string, path = '/echo') => `http://${host}:${portOf(web)}${path}`;
const json = (r: Reply) => JSON.parse(r.body.toString()) as { method: string; url: string; rawHeaders: string[]; length: number; sha: string };
const allowAll: EgressPolicy = { mode: 'allow-all-public' };

describe('egress proxy', () => {
  test('plain HTTP GET and POST pass, bodies streamed both ways', async (t) => {
    const { proxy, nextRecord } = await startProxy(t, { mode: 'allow-list', rules: [{ action: 'allow', host: 'api.test' }] });
    const get = await viaProxy(proxy, webUrl('api.test', '/echo?q=1'));
    assert.equal(get.status, 200);
    assert.deepEqual([json(get).method, json(get).url], ['GET', '/echo?q=1']);

    // The upstream sees the first chunk before the sandbox has sent the rest: nothing is buffered.
    const body = randomBytes(300_000);
    const first = new Promise<void>((r) => firstChunkSeen.push(r));
    const rec = nextRecord();
    const post = new Promise<Reply>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: proxy.port, path: webUrl('api.test'), method: 'POST', headers: { 'Content-Length': String(body.length) }, agent: false },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), reused: false }));
        },
      );
      req.on('error', reject);
      req.write(body.subarray(0, 1000));
      void first.then(() => req.end(body.subarray(1000)));
    });
    const r = await post;
    assert.equal(r.status, 200);
    assert.deepEqual([json(r).length, json(r).sha], [body.length, sha(body)]);
    const record = await rec;
    assert.equal(record.bytesUp, body.length);
    assert.equal(record.bytesDown, r.body.length);

    // And the response reaches the sandbox before the upstream has finished it.
    const drip = await new Promise<string>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: proxy.port, path: webUrl('api.test', '/drip'), agent: false }, (res) => {
          let got = '';
          res.on('data', (d: Buffer) => {
            got += d.toString();
            if (got === 'first;') dripRelease.shift()!();
          });
          res.on('end', () => resolve(got));
        })
        .on('error', reject);
    });
    assert.equal(drip, 'first;rest');
  });

  test('CONNECT tunnels carry TLS end to end and raw TCP', async (t) => {
    const { proxy, nextRecord } = await startProxy(t, {
      mode: 'allow-list',
      rules: [
        { action: 'allow', host: 'secure.test' },
        { action: 'allow', host: 'tcp.test' },
      ],
    });
    const tls = await tunnel(proxy, `secure.test:${portOf(secure)}`);
    assert.equal(tls.status, 200);
    const secureSocket = tlsConnect({ socket: tls.socket, servername: 'secure.test', ca: cert });
    await once(secureSocket, 'secureConnect');
    secureSocket.write('GET / HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n');
    let text = '';
    for await (const d of secureSocket) text += d;
    assert.match(text, /secure hello$/);

    const raw = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    assert.equal(raw.status, 200);
    const data = randomBytes(50_000);
    const rec = nextRecord();
    assert.equal(sha(await roundTrip(raw.socket, data)), sha(data));
    raw.socket.end();
    const record = await rec;
    assert.deepEqual([record.method, record.host, record.port, record.status, record.allowed], ['CONNECT', 'tcp.test', portOf(echo), 200, true]);
    assert.deepEqual([record.bytesUp, record.bytesDown], [50_000, 50_000]);
    assert.equal(record.resolvedAddress, '127.0.0.1');
    assert.deepEqual(record.sandbox, { uid: 'uid-1', name: 'agent', namespace: 'team' });
    assert.equal(record.owner, 'alice');
  });

  test('a denied host gets 403 naming sandbox, target and rule, for plain HTTP and CONNECT', async (t) => {
    const { proxy, records } = await startProxy(t, {
      mode: 'allow-list',
      rules: [
        { action: 'allow', host: '*.example.test' },
        { action: 'deny', host: 'deep.a.example.test' },
      ],
    });
    const r = await viaProxy(proxy, webUrl('deep.a.example.test'));
    assert.equal(r.status, 403);
    assert.equal(
      r.body.toString(),
      `Moat egress proxy: GET http://deep.a.example.test:${portOf(web)}/echo denied for sandbox "team/agent": denied by rules[1] "deny deep.a.example.test"\n`,
    );
    assert.equal(r.headers['x-moat-egress-denied'], 'denied by rules[1] "deny deep.a.example.test"');
    const c = await tunnel(proxy, 'other.test:443');
    c.socket.destroy();
    assert.equal(c.status, 403);
    assert.equal(c.body, 'Moat egress proxy: CONNECT other.test:443 denied for sandbox "team/agent": no allow rule matches (policy allow-list)\n');
    assert.match(c.head, /X-Moat-Egress-Denied: no allow rule matches/);
    const denied = records.filter((x) => !x.allowed);
    assert.equal(denied.length, 2);
    assert.deepEqual(
      denied.map((x) => [x.method, x.host, x.status, x.rule]),
      [
        ['GET', 'deep.a.example.test', 403, 'rules[1] "deny deep.a.example.test"'],
        ['CONNECT', 'other.test', 403, undefined],
      ],
    );
  });

  test('wildcards allow subdomains, not the apex', async (t) => {
    const { proxy } = await startProxy(t, { mode: 'allow-list', rules: [{ action: 'allow', host: '*.example.test' }] });
    assert.equal((await viaProxy(proxy, webUrl('a.example.test'))).status, 200);
    assert.equal((await viaProxy(proxy, webUrl('deep.a.example.test'))).status, 200);
    assert.equal((await viaProxy(proxy, webUrl('example.test'))).status, 403);
  });

  test('port rules', async (t) => {
    const { proxy } = await startProxy(t, { mode: 'allow-list', rules: [{ action: 'allow', host: 'tcp.test', ports: [portOf(echo)] }] });
    const ok = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    ok.socket.destroy();
    assert.equal(ok.status, 200);
    const no = await tunnel(proxy, `tcp.test:${portOf(sink)}`);
    no.socket.destroy();
    assert.equal(no.status, 403);
  });

  test('method and path rules apply to plain HTTP; CONNECT cannot satisfy them', async (t) => {
    const { proxy } = await startProxy(t, { mode: 'allow-list', rules: [{ action: 'allow', host: 'api.test', methods: ['GET'], paths: ['/echo/public'] }] });
    assert.equal((await viaProxy(proxy, webUrl('api.test', '/echo/public/x'))).status, 200);
    assert.equal((await viaProxy(proxy, webUrl('api.test', '/echo/public'), { method: 'POST', body: Buffer.from('x') })).status, 403);
    assert.equal((await viaProxy(proxy, webUrl('api.test', '/echo/private'))).status, 403);
    // Dot segments are resolved before the check, and the upstream gets the resolved path.
    assert.equal((await viaProxy(proxy, webUrl('api.test', '/echo/public/../private'))).status, 403);
    const ok = await viaProxy(proxy, webUrl('api.test', '/echo/public/a/../b'));
    assert.equal(json(ok).url, '/echo/public/b');
    const c = await tunnel(proxy, `api.test:${portOf(web)}`);
    c.socket.destroy();
    assert.equal(c.status, 403);
    assert.match(c.body, /do not apply to CONNECT tunnels/);
  });

  test('deny-all is the default', async (t) => {
    const { proxy } = await startProxy(t, {});
    const r = await viaProxy(proxy, webUrl('api.test'));
    assert.equal(r.status, 403);
    assert.match(r.body.toString(), /policy deny-all/);
  });

  test('allow-all-public allows all but deny rules', async (t) => {
    const { proxy } = await startProxy(t, { mode: 'allow-all-public', rules: [{ action: 'deny', host: 'other.test' }] });
    assert.equal((await viaProxy(proxy, webUrl('api.test'))).status, 200);
    const r = await viaProxy(proxy, webUrl('other.test'));
    assert.equal(r.status, 403);
    assert.match(r.body.toString(), /denied by rules\[0\] "deny other.test"/);
  });

  test('DNS rebinding: allowed names resolving to private addresses are refused; an explicit IP rule is not', async (t) => {
    const named = await startProxy(t, {
      mode: 'allow-list',
      rules: [
        { action: 'allow', host: 'rebind.test' },
        { action: 'allow', host: 'mixed.test' },
      ],
    });
    const r = await viaProxy(named.proxy, webUrl('rebind.test'));
    assert.equal(r.status, 403);
    assert.match(r.body.toString(), /rebind\.test resolves to 127\.0\.0\.1 \(loopback\), not a public address/);
    const c = await tunnel(named.proxy, `rebind.test:${portOf(echo)}`);
    c.socket.destroy();
    assert.equal(c.status, 403);
    const m = await viaProxy(named.proxy, webUrl('mixed.test'));
    assert.equal(m.status, 403);
    assert.match(m.body.toString(), /10\.0\.0\.1 \(private\), 169\.254\.169\.254 \(linkLocal\), ::1 \(loopback\)/);

    const ip = await startProxy(t, { mode: 'allow-list', rules: [{ action: 'allow', host: '127.0.0.1', ports: [portOf(web), portOf(echo)] }] });
    assert.equal((await viaProxy(ip.proxy, webUrl('127.0.0.1'))).status, 200);
    assert.equal((await viaProxy(ip.proxy, webUrl('[::ffff:127.0.0.1]'))).status, 200, 'the same address, spelled as IPv4-mapped IPv6');
    const ipTunnel = await tunnel(ip.proxy, `127.0.0.1:${portOf(echo)}`);
    ipTunnel.socket.destroy();
    assert.equal(ipTunnel.status, 200);

    // allow-all-public alone does not open loopback.
    const pub = await startProxy(t, allowAll);
    const p = await viaProxy(pub.proxy, webUrl('127.0.0.1'));
    assert.equal(p.status, 403);
    assert.match(p.body.toString(), /127\.0\.0\.1 is not a public address \(loopback\)/);
    const hex = await tunnel(pub.proxy, `2130706433:${portOf(echo)}`);
    hex.socket.destroy();
    assert.equal(hex.status, 403, 'numeric spellings of 127.0.0.1 are the same address');
  });

  test('address classes', () => {
    for (const a of ['8.8.8.8', '2606:4700:4700::1111', '::ffff:8.8.8.8']) assert.ok(isPublicAddress(a), a);
    const refused: Record<string, string> = {
      '127.0.0.1': 'loopback',
      '10.1.2.3': 'private',
      '172.16.0.1': 'private',
      '192.168.1.1': 'private',
      '169.254.169.254': 'linkLocal',
      '100.64.0.1': 'carrierGradeNat',
      '0.0.0.0': 'unspecified',
      '224.0.0.1': 'multicast',
      '240.0.0.1': 'reserved',
      '255.255.255.255': 'broadcast',
      '::1': 'loopback',
      '::': 'unspecified',
      'fe80::1': 'linkLocal',
      'fd00::1': 'uniqueLocal',
      'ff02::1': 'multicast',
      '::ffff:127.0.0.1': 'loopback',
      '::ffff:169.254.169.254': 'linkLocal',
      '::7f00:1': 'ipv4Compatible',
      '64:ff9b::7f00:1': 'rfc6052',
      '2002:7f00:1::': '6to4',
    };
    for (const [a, cls] of Object.entries(refused)) assert.equal(addressClass(a), cls, a);
    assert.equal(addressClass('not-an-ip'), 'invalid');
  });

  test('the connection limit answers 429, and frees up when a tunnel ends', async (t) => {
    const { proxy, nextRecord } = await startProxy(t, allowAll, { limits: { maxConnections: 2 } });
    const one = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    const two = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    assert.deepEqual([one.status, two.status], [200, 200]);
    const three = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    three.socket.destroy();
    assert.equal(three.status, 429);
    assert.match(three.body, /refused for sandbox "team\/agent": too many concurrent connections \(limit 2\)/);
    const plain = await viaProxy(proxy, webUrl('api.test'));
    assert.equal(plain.status, 429);
    const ended = nextRecord();
    one.socket.end();
    assert.equal((await ended).status, 200);
    const four = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    assert.equal(four.status, 200);
    two.socket.destroy();
    four.socket.destroy();
  });

  test('bandwidth limits slow transfers down to their rate, in both directions', async (t) => {
    const rate = 2 * 2 ** 20;
    const n = 4 * 2 ** 20;
    const burst = rate / 8;
    const { proxy } = await startProxy(t, allowAll, { limits: { downBytesPerSecond: rate, upBytesPerSecond: rate } });
    let t0 = performance.now();
    const down = await viaProxy(proxy, webUrl('api.test', `/bytes?n=${n}`));
    const downMs = performance.now() - t0;
    assert.equal(down.body.length, n);
    assert.ok(downMs >= ((n - burst) / rate) * 1000, `download of ${n} bytes at ${rate} B/s took ${downMs.toFixed(0)} ms`);
    // Uploads through a tunnel.
    const up = await tunnel(proxy, `tcp.test:${portOf(sink)}`);
    t0 = performance.now();
    up.socket.end(Buffer.alloc(n, 1));
    const [count] = (await once(up.socket, 'data')) as [Buffer];
    const upMs = performance.now() - t0;
    assert.equal(count.toString().trim(), String(n));
    assert.ok(upMs >= ((n - burst) / rate) * 1000, `upload of ${n} bytes at ${rate} B/s took ${upMs.toFixed(0)} ms`);
  });

  test('an unknown source address gets 403', async (t) => {
    const { proxy, records } = await startProxy(t, allowAll, { unknown: true });
    const r = await viaProxy(proxy, webUrl('api.test'));
    assert.equal(r.status, 403);
    assert.match(r.body.toString(), /127\.0\.0\.1 is not a Moat sandbox/);
    const c = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    c.socket.destroy();
    assert.equal(c.status, 403);
    assert.deepEqual(
      records.map((x) => [x.allowed, x.sandbox, x.status]),
      [
        [false, undefined, 403],
        [false, undefined, 403],
      ],
    );
  });

  test('an unreachable upstream is a 502 with the reason', async (t) => {
    const { proxy, nextRecord } = await startProxy(t, allowAll);
    const rec = nextRecord();
    const r = await viaProxy(proxy, `http://down.test:${closedPort}/`);
    assert.equal(r.status, 502);
    assert.match(r.body.toString(), /cannot reach down\.test:\d+ \(127\.0\.0\.1\): ECONNREFUSED/);
    assert.equal((await rec).status, 502);
    const c = await tunnel(proxy, `down.test:${closedPort}`);
    c.socket.destroy();
    assert.equal(c.status, 502);
    const unresolvable = await viaProxy(proxy, 'http://nowhere.test/');
    assert.equal(unresolvable.status, 502);
    assert.match(unresolvable.body.toString(), /cannot resolve nowhere\.test: ENOTFOUND/);
  });

  test('hop-by-hop and Proxy-* headers are not forwarded; Host is the URL authority', async (t) => {
    const { proxy } = await startProxy(t, allowAll);
    const r = await viaProxy(proxy, webUrl('api.test'), {
      headers: {
        'Proxy-Authorization': 'Basic c2VjcmV0',
        Connection: 'keep-alive, X-Drop-Me',
        'X-Drop-Me': '1',
        'Keep-Alive': 'timeout=5',
        TE: 'trailers',
        'X-Keep': 'yes',
        Host: 'elsewhere.test',
      },
    });
    const seen = json(r)
      .rawHeaders.filter((_, i) => i % 2 === 0)
      .map((h) => h.toLowerCase());
    for (const h of ['proxy-authorization', 'x-drop-me', 'keep-alive', 'te']) assert.ok(!seen.includes(h), `${h} was forwarded`);
    assert.ok(seen.includes('x-keep'));
    const raw = json(r).rawHeaders;
    assert.equal(raw[raw.findIndex((h) => h.toLowerCase() === 'host') + 1], `api.test:${portOf(web)}`);
    const b = await viaProxy(proxy, webUrl('api.test', '/bytes?n=10'));
    assert.equal(b.headers['x-upstream'], 'yes');
    assert.equal(b.headers['proxy-authenticate'], undefined);
  });

  test('keep-alive between sandbox and proxy', async (t) => {
    const { proxy } = await startProxy(t, allowAll);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    const first = await viaProxy(proxy, webUrl('api.test'), { agent });
    const second = await viaProxy(proxy, webUrl('other.test'), { agent });
    assert.deepEqual([first.status, second.status, first.reused, second.reused], [200, 200, false, true]);
  });

  test('close() ends open tunnels', async (t) => {
    const { proxy } = await startProxy(t, allowAll);
    const c = await tunnel(proxy, `tcp.test:${portOf(echo)}`);
    assert.equal(c.status, 200);
    const closed = once(c.socket, 'close');
    await proxy.close();
    await closed;
    await assert.rejects(viaProxy(proxy, webUrl('api.test')), /ECONNREFUSED/);
  });

  test('real clients: curl -x for http and https, and its view of a denial', { skip: !hasCurl && 'curl is not installed' }, async (t) => {
    const { proxy } = await startProxy(t, {
      mode: 'allow-list',
      rules: [
        { action: 'allow', host: 'api.test' },
        { action: 'allow', host: 'secure.test' },
      ],
    });
    const curl = (...args: string[]) => run('curl', ['-sS', '--max-time', '10', '-x', proxy.url, ...args]);
    const plain = await curl(webUrl('api.test', '/echo?via=curl'));
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(JSON.parse(plain.stdout).url, '/echo?via=curl');
    const tls = await curl('--cacert', join(dir, 'cert.pem'), `https://secure.test:${portOf(secure)}/`);
    assert.equal(tls.code, 0, tls.stderr);
    assert.equal(tls.stdout, 'secure hello');
    const denied = await curl('-i', webUrl('other.test'));
    assert.match(denied.stdout, /^HTTP\/1\.1 403 Forbidden/);
    assert.match(denied.stdout, /Moat egress proxy: GET http:\/\/other\.test:\d+\/echo denied for sandbox "team\/agent"/);
    const deniedTls = await curl(`https://other.test:${portOf(secure)}/`);
    assert.notEqual(deniedTls.code, 0);
    assert.match(deniedTls.stderr, /403/);
  });
});
