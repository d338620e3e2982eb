import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { networkKey, run } from '@moat/runtime';
import { until } from '../../helpers/extensions.js';
import WebSocket from 'ws';
import { NS, TEST_NETWORK, sh, startTestServer, type TestServer } from '../../helpers/server.js';

const CLI = join(import.meta.dirname, '../../../packages/cli/dist/main.js');

function listen(server: Server, host: string): Promise<number> {
  return new Promise((resolve) => server.listen(0, host, () => resolve((server.address() as { port: number }).port)));
}

/** An upstream on the host's loopback; sandboxes reach it only through the proxy, by a pinned name. */
function upstream(): Server {
  return createServer((req, res) => {
    if (req.url === '/big') return void res.end(Buffer.alloc(600_000, 'x'));
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => res.end(`upstream saw ${req.method} ${req.url}${body ? ` ${body}` : ''}`));
  });
}

const sandbox = (name: string, egressPolicy?: unknown) => ({
  metadata: { name },
  spec: { podTemplate: { spec: { containers: [{ image: 'base' }] } }, ...(egressPolicy ? { egressPolicy } : {}) },
});

/**
 * A host of the test's own in a network namespace it makes, on a private address the host reaches through a veth:
 * the "outside" a sandbox must not reach directly (no packet of these tests goes anywhere else).
 */
async function outsideHost(): Promise<{ address: string; port: number; close(): Promise<void> }> {
  const i = Number(process.env.MOAT_TEST_NET ?? 0);
  const [ns, hostIf, nsIf, hostAddress, address] = [`moate-out${i}`, `xo${i}h`, `xo${i}n`, `10.253.${i}.1`, `10.253.${i}.2`];
  const close = async () => {
    await run('ip', ['link', 'del', hostIf], { allowFail: true });
    await run('ip', ['netns', 'del', ns], { allowFail: true });
  };
  await close(); // what an earlier run left
  await run('ip', ['netns', 'add', ns]);
  await run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
  await run('ip', ['link', 'set', nsIf, 'netns', ns]);
  await run('ip', ['addr', 'add', `${hostAddress}/30`, 'dev', hostIf]);
  await run('ip', ['link', 'set', hostIf, 'up']);
  await run('ip', ['-n', ns, 'addr', 'add', `${address}/30`, 'dev', nsIf]);
  await run('ip', ['-n', ns, 'link', 'set', nsIf, 'up']);
  const server = spawn('ip', ['netns', 'exec', ns, 'python3', '-m', 'http.server', '80', '--bind', address], { stdio: 'ignore' });
  await until('the outside host to listen', async () => ((await fetch(`http://${address}/`).catch(() => undefined))?.ok ? true : undefined), 20_000);
  return {
    address,
    port: 80,
    async close() {
      server.kill();
      await once(server, 'exit');
      await close();
    },
  };
}

/** Whether a TCP connection from inside the sandbox succeeds (no proxy involved). */
const tcpOpen = async (server: TestServer, name: string, host: string, port: number) =>
  (await sh(server, name, `timeout 3 bash -c 'echo > /dev/tcp/${host}/${port}' 2>/dev/null && echo open || echo closed`)).stdout.trim();

describe('network isolation and the egress proxy', () => {
  let server: TestServer;
  const up = upstream();
  const hostSide = upstream();
  let port: number;
  let hostPort: number;

  before(async () => {
    port = await listen(up, '127.0.0.1');
    hostPort = await listen(hostSide, '0.0.0.0'); // every host address, the service address included
    server = await startTestServer({
      network: {
        pinnedHosts: { 'allowed.test': '127.0.0.1', 'other.test': '127.0.0.1' },
        // A resolver for names that are not pinned: rebind.test answers with loopback, as a DNS rebinding attack would.
        lookup: async (host) => {
          if (host === 'rebind.test') return ['127.0.0.1'];
          throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
        },
      },
    });
    const policy = {
      mode: 'allow-list',
      rules: [
        { action: 'allow', host: 'allowed.test' },
        { action: 'allow', host: 'rebind.test' },
        { action: 'allow', host: 'other.test', methods: ['GET'], paths: ['/public'] },
      ],
    };
    for (const [name, p] of [
      ['agent', policy],
      ['closed', undefined],
    ] as const) {
      assert.equal((await server.api(NS, { method: 'POST', json: sandbox(name, p) })).status, 201);
      assert.equal((await server.api(`${NS}/${name}/wait?timeoutSeconds=60`)).status, 200);
    }
  });
  after(async () => {
    await server.close();
    up.close();
    hostSide.close();
  });

  test('an allowed host works through the proxy, plain HTTP and CONNECT, with the proxy found from the environment', async () => {
    const r = await sh(
      server,
      'agent',
      `curl -sS --max-time 10 http://allowed.test:${port}/hi; echo; curl -sS --max-time 10 -p -d payload http://allowed.test:${port}/tunnel; echo; echo $HTTPS_PROXY`,
    );
    assert.equal(
      r.stdout,
      `upstream saw GET /hi\nupstream saw POST /tunnel payload\nhttp://${TEST_NETWORK.serviceAddress}:${TEST_NETWORK.proxyPort}\n`,
      r.stderr,
    );
  });

  test('a denied request gets a 403 that names the rule; method and path rules apply to plain HTTP', async () => {
    const code = (url: string, extra = '') => sh(server, 'agent', `curl -s --max-time 10 -o /tmp/body -w '%{http_code}' ${extra} ${url}; echo; cat /tmp/body`);
    let r = await code(`http://denied.test:${port}/`);
    assert.match(r.stdout, /^403\n/);
    assert.match(r.stdout, /GET http:\/\/denied\.test:\d+\/ denied for sandbox "default\/agent": no allow rule matches/);
    assert.match(r.stdout, /allow-list/);
    r = await code(`http://other.test:${port}/public/x`);
    assert.match(r.stdout, /^200\nupstream saw GET \/public\/x/);
    r = await code(`http://other.test:${port}/private`);
    assert.match(r.stdout, /^403\n/);
    r = await code(`http://other.test:${port}/public/x`, '-X POST');
    assert.match(r.stdout, /^403\n/);
  });

  test('with no policy a sandbox is deny-all, and is told so at once rather than left hanging', async () => {
    const t0 = Date.now();
    const r = await sh(server, 'closed', `curl -s --max-time 10 -w '\\n%{http_code}' http://allowed.test:${port}/`);
    assert.match(r.stdout, /deny-all/);
    assert.match(r.stdout, /\n403$/);
    assert.ok(Date.now() - t0 < 5000);
  });

  test('an allowed name that resolves to a private address is refused (DNS rebinding)', async () => {
    const r = await sh(server, 'agent', `curl -s --max-time 10 -w '\\n%{http_code}' http://rebind.test:${port}/`);
    assert.match(r.stdout, /\n403$/);
    assert.match(r.stdout, /127\.0\.0\.1/);
    assert.doesNotMatch(r.stdout, /upstream saw/);
  });

  test('nothing is reachable directly: not the host, not another sandbox, not metadata or private ranges', async () => {
    const hostAddresses = Object.values(networkInterfaces())
      .flat()
      .filter((a) => a && a.family === 'IPv4' && !a.internal)
      .map((a) => a!.address);
    assert.equal(await tcpOpen(server, 'agent', TEST_NETWORK.serviceAddress, TEST_NETWORK.proxyPort), 'open', 'the proxy itself is reachable');
    assert.equal(await tcpOpen(server, 'agent', TEST_NETWORK.serviceAddress, hostPort), 'closed');
    for (const a of hostAddresses) assert.equal(await tcpOpen(server, 'agent', a, hostPort), 'closed', a);
    const other = (await (await server.api(`${NS}/closed`)).json()) as { status: { network: { address: string } } };
    await sh(server, 'closed', 'nohup python3 -m http.server 8000 >/dev/null 2>&1 &');
    const listening = `for i in $(seq 50); do timeout 1 bash -c 'echo > /dev/tcp/127.0.0.1/8000' 2>/dev/null && echo listening && break; sleep 0.2; done`;
    assert.equal((await sh(server, 'closed', listening)).stdout, 'listening\n');
    assert.equal(await tcpOpen(server, 'agent', other.status.network.address, 8000), 'closed');
    // A private address outside, which the host itself reaches (the test's own namespace): not from a sandbox.
    const outside = await outsideHost();
    try {
      assert.equal(await tcpOpen(server, 'agent', outside.address, outside.port), 'closed', outside.address);
    } finally {
      await outside.close();
    }
    assert.match((await sh(server, 'agent', 'cat /proc/net/if_inet6 | wc -l; ip -6 addr | wc -l')).stdout, /^0\n0\n$/, 'no IPv6');
    const change = await sh(server, 'agent', 'ip addr add 10.234.9.9/32 dev eth0');
    assert.notEqual(change.exit?.exitCode, 0, 'the sandbox cannot change its own network');
  });

  test('every decision is recorded, with bytes, and shown by `moat egress log`', async () => {
    const sbx = (await (await server.api(`${NS}/agent`)).json()) as { status: { network: { address: string } } };
    const { items } = (await (await server.api(`${NS}/agent/egress`)).json()) as { items: Record<string, any>[] };
    const allowed = items.find((r) => r.allowed && r.path === '/hi')!;
    assert.equal(allowed.host, 'allowed.test');
    assert.equal(allowed.sandbox.name, 'agent');
    assert.ok(allowed.bytesDown > 0);
    assert.equal(allowed.remoteAddress, sbx.status.network.address);
    const tunnel = items.find((r) => r.method === 'CONNECT')!;
    assert.ok(tunnel.bytesUp > 0 && tunnel.allowed);
    const denied = items.find((r) => !r.allowed && r.host === 'denied.test')!;
    assert.match(denied.reason, /no allow rule/);

    const cli = await new Promise<{ code: number; stdout: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'egress', 'log', 'agent'], { env: { ...process.env, MOAT_URL: server.url, MOAT_API_KEY: server.adminKey } });
      let stdout = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.on('close', (code) => resolve({ code: code ?? -1, stdout }));
    });
    assert.equal(cli.code, 0);
    assert.match(cli.stdout, /^TIME\s+DECISION\s+METHOD\s+TARGET/);
    assert.match(cli.stdout, /allowed\s+GET\s+allowed\.test:\d+\/hi\s+200/);
    assert.match(cli.stdout, /DENIED\s+GET\s+denied\.test:\d+\//);
  });

  test('deleting a sandbox removes its namespace, veth and lease', async () => {
    const created = await server.api(NS, { method: 'POST', json: sandbox('brief') });
    const { metadata } = (await created.json()) as { metadata: { uid: string } };
    await server.api(`${NS}/brief/wait?timeoutSeconds=60`);
    const key = networkKey(metadata.uid);
    assert.ok(existsSync(`/run/netns/${TEST_NETWORK.name}-${key}`));
    await server.api(`${NS}/brief?wait=true`, { method: 'DELETE' });
    assert.ok(!existsSync(`/run/netns/${TEST_NETWORK.name}-${key}`), 'namespace gone');
    assert.ok(!existsSync(`/sys/class/net/${TEST_NETWORK.ifPrefix}${key}`), 'veth gone');
  });

  test('an invalid egress policy is refused with the reason', async () => {
    const bad = await server.api(NS, { method: 'POST', json: sandbox('bad', { mode: 'allow-list', rules: [{ action: 'allow', host: '*.1.2.3.4' }] }) });
    assert.equal(bad.status, 422, await bad.text());
    const unknownMode = await server.api(NS, { method: 'POST', json: sandbox('bad', { mode: 'open' }) });
    assert.equal(unknownMode.status, 400);
  });

  test('port exposure: HTTP and WebSocket to a port inside the sandbox, through the API only, authenticated', async () => {
    const script = await readFile(join(import.meta.dirname, '../../fixtures/echo-server.py'));
    assert.equal((await server.api(`${NS}/agent/files/content?path=/tmp/echo.py`, { method: 'PUT', body: script })).status, 200);
    await sh(server, 'agent', 'nohup python3 /tmp/echo.py >/dev/null 2>&1 &');
    await sh(server, 'agent', `for i in $(seq 50); do timeout 1 bash -c 'echo > /dev/tcp/127.0.0.1/9000' 2>/dev/null && break; sleep 0.1; done`);

    const res = await server.api(`${NS}/agent/ports/9000/some/path?q=1`, { headers: { 'x-custom': 'yes' } });
    assert.equal(res.status, 200);
    const seen = (await res.json()) as { method: string; path: string; headers: Record<string, string> };
    assert.equal(seen.path, '/some/path?q=1');
    assert.equal(seen.headers['x-custom'], 'yes');
    assert.equal(seen.headers.authorization, undefined, "Moat's API key never reaches the sandbox");
    const post = (await (await server.api(`${NS}/agent/ports/9000/`, { method: 'POST', body: 'x' })).json()) as { method: string };
    assert.equal(post.method, 'POST');

    assert.equal((await fetch(`${server.url}${NS}/agent/ports/9000/`)).status, 401, 'no key, no access');
    const closedPort = await server.api(`${NS}/agent/ports/9999/`);
    assert.equal(closedPort.status, 502);
    assert.match(((await closedPort.json()) as { message: string }).message, /nothing listens on port 9999 in sandbox "agent"/);

    // The host-name form: <port>-<uid>.<domain>.
    const { metadata } = (await (await server.api(`${NS}/agent`)).json()) as { metadata: { uid: string } };
    const byHost = await new Promise<string>((resolve, reject) => {
      const u = new URL(server.url);
      const req = httpRequest(
        {
          host: u.hostname,
          port: u.port,
          path: '/via-host',
          headers: { host: `9000-${metadata.uid}.sandbox.localhost`, authorization: `Bearer ${server.adminKey}` },
        },
        (r) => {
          let body = '';
          r.on('data', (d) => (body += d));
          r.on('end', () => resolve(body));
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.equal((JSON.parse(byHost) as { path: string }).path, '/via-host');

    const ws = new WebSocket(`${server.url.replace('http', 'ws')}${NS}/agent/ports/9000/ws`, { headers: { authorization: `Bearer ${server.adminKey}` } });
    await once(ws, 'open');
    ws.send('hello');
    const [reply] = (await once(ws, 'message')) as [Buffer];
    assert.equal(reply.toString(), 'echo:hello');
    ws.close();
    await once(ws, 'close');
  });

  test("a sandbox's egressLimits throttle its downloads at the proxy", async () => {
    const body = sandbox('slow', { mode: 'allow-list', rules: [{ action: 'allow', host: 'allowed.test' }] });
    const spec = { ...body.spec, egressLimits: { downBytesPerSecond: 200_000 } };
    assert.equal((await server.api(NS, { method: 'POST', json: { ...body, spec } })).status, 201);
    await server.api(`${NS}/slow/wait?timeoutSeconds=60`);
    const r = await sh(server, 'slow', `curl -s --max-time 20 -o /dev/null -w '%{size_download} %{time_total}' http://allowed.test:${port}/big`);
    const [size, seconds] = r.stdout.split(' ').map(Number);
    assert.equal(size, 600_000);
    assert.ok(seconds! >= 1.5, `600 kB at 200 kB/s took ${seconds} s`);
    const fast = await sh(server, 'agent', `curl -s --max-time 20 -o /dev/null -w '%{time_total}' http://allowed.test:${port}/big`);
    assert.ok(Number(fast.stdout) < 1, `without limits it is fast (${fast.stdout} s)`);
  });

  test('a host firewall flush is repaired: the table comes back and isolation holds', async () => {
    await run('nft', ['delete', 'table', 'inet', TEST_NETWORK.name]);
    await until(
      'the firewall table to be back',
      async () => ((await run('nft', ['list', 'table', 'inet', TEST_NETWORK.name], { allowFail: true })).code === 0 ? true : undefined),
      10_000,
    );
    assert.equal(await tcpOpen(server, 'agent', TEST_NETWORK.serviceAddress, hostPort), 'closed');
  });
});
