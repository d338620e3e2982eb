// Network figures: egress proxy throughput and added latency against direct loopback in the same run,
// and per-sandbox namespace setup time.
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { EgressProxy } from '@moat/gateway';
import { SandboxNetworks, allocateLease, networkKey, which } from '@moat/runtime';
import { ms, row, summary, time } from './stats.js';

const BYTES = Number(process.env.BENCH_NET_BYTES ?? 256 * 2 ** 20);
const N_REQ = Number(process.env.BENCH_NET_REQUESTS ?? 500);
const N_NETNS = Number(process.env.BENCH_NETNS ?? 30);
const RUNS = 3;
const CHUNK = Buffer.alloc(64 * 1024, 1);

function send(out: NodeJS.WritableStream & { once(e: 'drain', f: () => void): unknown }, n: number, done: () => void) {
  const pump = () => {
    while (n > 0) {
      const c = n >= CHUNK.length ? CHUNK : CHUNK.subarray(0, n);
      n -= c.length;
      if (!out.write(c)) return void out.once('drain', pump);
    }
    done();
  };
  pump();
}

async function listening<S extends Server>(s: S): Promise<S> {
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return s;
}
const portOf = (s: Server) => (s.address() as { port: number }).port;

function get(agent: http.Agent, port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, (res) => {
        let n = 0;
        res.on('data', (d: Buffer) => (n += d.length));
        res.on('end', () => resolve(n));
      })
      .on('error', reject);
  });
}

/** Opens a raw TCP stream, through a CONNECT tunnel when a proxy port is given, and reads it to the end. */
async function readStream(port: number, via?: number): Promise<number> {
  const s: Socket = connect(via ?? port, '127.0.0.1');
  if (via) {
    s.write(`CONNECT bench.test:${port} HTTP/1.1\r\n\r\n`);
    const [head] = (await once(s, 'data')) as [Buffer];
    if (!head.toString().startsWith('HTTP/1.1 200')) throw new Error(`CONNECT failed: ${head.toString()}`);
  }
  let n = 0;
  s.on('data', (d: Buffer) => (n += d.length));
  await once(s, 'end');
  s.destroy();
  return n;
}

async function tunnelRoundTrip(port: number, via?: number): Promise<void> {
  const s = connect(via ?? port, '127.0.0.1');
  if (via) {
    s.write(`CONNECT bench.test:${port} HTTP/1.1\r\n\r\n`);
    await once(s, 'data');
  }
  s.write('x');
  await once(s, 'data');
  s.destroy();
}

const mbps = (bytes: number, msTaken: number) => bytes / 2 ** 20 / (msTaken / 1000);

async function benchProxy() {
  const web = await listening(
    http.createServer((req, res) => {
      if (req.url?.startsWith('/bytes')) {
        res.writeHead(200, { 'Content-Length': BYTES });
        return send(res, BYTES, () => res.end());
      }
      res.end('ok');
    }),
  );
  const stream = await listening(createServer((s) => send(s, BYTES, () => s.end())));
  const echo = await listening(createServer((s) => s.pipe(s)));
  const proxy = await EgressProxy.start({
    identify: () => ({
      uid: 'bench',
      name: 'bench',
      namespace: 'bench',
      policy: { mode: 'allow-all-public' },
      limits: { upBytesPerSecond: 0, downBytesPerSecond: 0 },
    }),
    pinnedHosts: { 'bench.test': '127.0.0.1' },
  });
  const direct = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const viaProxy = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const url = (path: string) => `http://bench.test:${portOf(web)}${path}`;
  try {
    // Warm both paths (JIT, keep-alive sockets).
    for (let i = 0; i < 20; i++) {
      await get(direct, portOf(web), '/small');
      await get(viaProxy, proxy.port, url('/small'));
    }
    // Alternating, median of a few runs: a single stream's rate swings with whatever else the machine does.
    const rates: Record<'httpDirect' | 'httpProxy' | 'tcpDirect' | 'tcpTunnel', number[]> = { httpDirect: [], httpProxy: [], tcpDirect: [], tcpTunnel: [] };
    for (let i = 0; i < RUNS; i++) {
      rates.httpDirect.push(await time(() => get(direct, portOf(web), '/bytes')));
      rates.httpProxy.push(await time(() => get(viaProxy, proxy.port, url('/bytes'))));
      rates.tcpDirect.push(await time(() => readStream(portOf(stream))));
      rates.tcpTunnel.push(await time(() => readStream(portOf(stream), proxy.port)));
    }
    const [httpDirect, httpProxy, tcpDirect, tcpTunnel] = Object.values(rates).map((v) => summary(v).p50) as [number, number, number, number];

    const latDirect: number[] = [];
    const latProxy: number[] = [];
    for (let i = 0; i < N_REQ; i++) {
      latDirect.push(await time(() => get(direct, portOf(web), '/small')));
      latProxy.push(await time(() => get(viaProxy, proxy.port, url('/small'))));
    }
    const connDirect: number[] = [];
    const connTunnel: number[] = [];
    for (let i = 0; i < Math.min(N_REQ, 200); i++) {
      connDirect.push(await time(() => tunnelRoundTrip(portOf(echo))));
      connTunnel.push(await time(() => tunnelRoundTrip(portOf(echo), proxy.port)));
    }

    const mib = (BYTES / 2 ** 20).toFixed(0);
    console.log(`  throughput (${mib} MiB over loopback, one stream, median of ${RUNS}):`);
    const line = (label: string, d: number, p: number) =>
      console.log(`  ${label.padEnd(44)} ${mbps(BYTES, p).toFixed(0).padStart(6)} MiB/s  (direct ${mbps(BYTES, d).toFixed(0)} MiB/s, ×${(d / p).toFixed(2)})`);
    line('plain HTTP through the proxy', httpDirect, httpProxy);
    line('CONNECT tunnel', tcpDirect, tcpTunnel);
    console.log('  latency per request (same run):');
    row('GET direct, keep-alive', latDirect);
    const s = row('GET through the proxy, keep-alive', latProxy, latDirect);
    console.log(`  ${'added latency per request (p50)'.padEnd(44)} ${ms(s.p50 - summary(latDirect).p50)}`);
    row('TCP connect + round trip direct', connDirect);
    row('CONNECT tunnel + round trip', connTunnel, connDirect);
  } finally {
    direct.destroy();
    viaProxy.destroy();
    await proxy.close();
    for (const s of [web, stream, echo]) s.close();
  }
}

async function benchNamespaces() {
  if (process.getuid?.() !== 0 || !(await which('nft')) || !(await which('ip'))) {
    console.log('  namespace setup: skipped (needs root, iproute2 and nftables)');
    return;
  }
  // Names and a subnet of its own, so a Moat server on this machine is left alone.
  const nets = new SandboxNetworks({ name: 'moatbench', ifPrefix: 'mb', subnet: '10.232.0.0/16', serviceAddress: '10.232.0.1', servicePorts: [3128] });
  await nets.init();
  const leases: string[] = [];
  const lease = () => {
    const l = allocateLease(nets.pool, leases);
    leases.push(l);
    return l;
  };
  try {
    const keys: string[] = [];
    const setup: number[] = [];
    for (let i = 0; i < N_NETNS; i++) {
      const key = networkKey(randomUUID());
      keys.push(key);
      setup.push(await time(() => nets.setup(key, lease())));
    }
    const teardown: number[] = [];
    for (const k of keys) teardown.push(await time(() => nets.teardown(k)));
    const burst = Array.from({ length: 20 }, () => networkKey(randomUUID()));
    const wall = await time(() => Promise.all(burst.map((k) => nets.setup(k, lease()))));
    await Promise.all(burst.map((k) => nets.teardown(k)));

    console.log('  sandbox network namespace:');
    const s = row('setup (netns, veth, addresses, routes)', setup);
    row('teardown', teardown);
    console.log(`  ${'20 setups at once, wall time per sandbox'.padEnd(44)} ${ms(wall / 20)}`);
    console.log(`  targets: namespace setup p50 ≤ 10 ms: ${s.p50 <= 10 ? 'met' : 'MISSED'}`);
  } finally {
    await nets.remove();
  }
}

export async function benchNet() {
  console.log('\n== net (sandbox networks, egress proxy) ==');
  // Namespaces first: every spawn forks this process, so its heap size shows in the figures.
  await benchNamespaces();
  await benchProxy();
}
