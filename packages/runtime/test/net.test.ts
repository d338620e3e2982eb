import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { SandboxNetworks, addressPool, allocateLease, leaseAddresses, networkKey, poolCapacity, renderRuleset, type SandboxNetwork } from '../src/net/index.js';
import { run } from '../src/run.js';

// A subnet, service address and names of their own, so a Moat server on this machine is never disturbed.
const SUBNET = '10.231.0.0/16';
const SERVICE = '10.231.0.1';
const OPTS = { name: 'moattest', ifPrefix: 'mt', subnet: SUBNET, serviceAddress: SERVICE };

describe('address leases', () => {
  const pool = addressPool(SUBNET, SERVICE);

  test('the lowest free /31 is leased; the service address block never is', () => {
    assert.equal(allocateLease(pool, []), '10.231.0.3');
    assert.equal(allocateLease(pool, ['10.231.0.3']), '10.231.0.5');
    assert.equal(allocateLease(pool, ['10.231.0.3', '10.231.0.7']), '10.231.0.5');
    assert.equal(allocateLease(pool, ['10.231.0.5', '10.9.9.9']), '10.231.0.3', 'addresses outside the pool are ignored');
    const outside = addressPool('10.231.0.0/30', '10.200.0.1');
    assert.equal(allocateLease(outside, []), '10.231.0.1', 'a service address outside the subnet reserves nothing');
  });

  test('a lease gives the sandbox the odd address and the host end the even one', () => {
    assert.deepEqual(leaseAddresses(pool, '10.231.3.7'), { address: '10.231.3.7', gateway: '10.231.3.6', prefixLength: 31 });
    for (const bad of ['10.231.3.6', '10.231.0.1', '10.232.0.3', 'x']) assert.throws(() => leaseAddresses(pool, bad), /not a sandbox lease/, bad);
  });

  test('exhaustion is an error, and capacity accounts for the reserved block', () => {
    const small = addressPool('10.231.0.0/29', SERVICE);
    assert.equal(poolCapacity(small), 3);
    const used: string[] = [];
    for (let i = 0; i < 3; i++) used.push(allocateLease(small, used));
    assert.equal(new Set(used).size, 3);
    assert.throws(() => allocateLease(small, used), /exhausted/);
  });

  test('bad subnets and service addresses are refused', () => {
    assert.throws(() => addressPool('10.231.0.0', SERVICE), /not an IPv4 CIDR/);
    assert.throws(() => addressPool('10.231.0.1/16', SERVICE), /host bits/);
    assert.throws(() => addressPool('10.231.0.0/31', SERVICE), /between/);
    assert.throws(() => addressPool('10.0.0.0/7', SERVICE), /between/);
    assert.throws(() => addressPool('127.0.0.0/16', SERVICE), /special range/);
    assert.throws(() => addressPool('169.254.0.0/16', '10.0.0.1'), /special range/);
    assert.throws(() => addressPool('10.231.0.0/16', '169.254.0.1'), /special range/);
    assert.throws(() => addressPool('10.231.0.0/16', '::1'), /not an IPv4/);
  });

  test('network keys are the random part of v4 UUIDs', () => {
    assert.equal(networkKey('1A2B3C4D-5E6F-4a1b-8c2d-0123456789ab'), '1a2b3c4d5e6f');
    assert.throws(() => networkKey('01890a5d-ac96-774b-bcce-b302099a8057'), /v4/);
    assert.throws(() => networkKey('../../etc'), /v4/);
  });
});

describe('nft ruleset', () => {
  test('nft accepts it for any configuration (checked, not applied)', async () => {
    const base = { table: 'moattest', ifPrefix: 'mt', subnet: SUBNET, serviceAddress: SERVICE, serviceInSubnet: true, servicePorts: [3128, 8080, 3128] };
    for (const input of [base, { ...base, servicePorts: [] }, { ...base, serviceAddress: '10.99.0.1', serviceInSubnet: false }]) {
      await run('nft', ['-c', '-f', '-'], { input: renderRuleset(input) });
    }
  });
});

/** Connects to each target from inside a namespace: `ok:<greeting>`, an error code, or `timeout`. */
async function probe(netnsPath: string | undefined, targets: { host: string; port: number; localAddress?: string }[], timeoutMs = 1500): Promise<string[]> {
  const script = `
    const net = require('net');
    const [targets, timeoutMs] = JSON.parse(process.argv[1]);
    Promise.all(targets.map((t) => new Promise((res) => {
      const s = net.connect({ host: t.host, port: t.port, localAddress: t.localAddress });
      let data = '';
      const timer = setTimeout(() => { s.destroy(); res('timeout'); }, timeoutMs);
      s.on('data', (d) => (data += d));
      s.on('end', () => { clearTimeout(timer); res('ok:' + data.trim()); });
      s.on('error', (e) => { clearTimeout(timer); res(e.code); });
    }))).then((r) => console.log(JSON.stringify(r)));`;
  const args = ['-e', script, JSON.stringify([targets, timeoutMs])];
  const r = netnsPath ? await run('nsenter', [`--net=${netnsPath}`, process.execPath, ...args]) : await run(process.execPath, args);
  return JSON.parse(r.stdout) as string[];
}

function greeter(name: string, host: string, port = 0): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer((c) => c.end(`${name}\n`));
    s.once('error', reject);
    s.listen(port, host, () => resolve(s));
  });
}
const portOf = (s: Server) => (s.address() as { port: number }).port;

/** A listener inside a namespace, for what must not reach it. */
async function greeterIn(netnsPath: string, name: string, port: number): Promise<ChildProcess> {
  const child = spawn(
    'nsenter',
    [
      `--net=${netnsPath}`,
      process.execPath,
      '-e',
      `require('net').createServer((c) => c.end('${name}\\n')).listen(${port}, '0.0.0.0', () => console.log('listening'))`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
    child.once('exit', (code) => reject(new Error(`listener in ${netnsPath} exited with ${code}`)));
  });
  return child;
}

async function hostState(nets: SandboxNetworks, key: string) {
  const link = (await run('ip', ['link', 'show', 'dev', nets.hostInterface(key)], { allowFail: true })).code === 0;
  return { netns: existsSync(nets.netnsPath(key)), link };
}

const newKey = () => networkKey(randomUUID());

describe('sandbox networks (real namespaces)', { concurrency: false }, () => {
  let nets: SandboxNetworks;
  const leases: string[] = [];
  const servers: Server[] = [];
  const children: ChildProcess[] = [];
  let allowed: Server;
  let otherPort: Server;
  let hostWide: Server;
  let a: SandboxNetwork;
  let b: SandboxNetwork;

  const lease = () => {
    const l = allocateLease(nets.pool, leases);
    leases.push(l);
    return l;
  };

  before(async () => {
    // The service address must exist before anything can listen on it; the ports are known only then.
    await new SandboxNetworks({ ...OPTS, servicePorts: [] }).init();
    allowed = await greeter('allowed', SERVICE);
    otherPort = await greeter('other-port', SERVICE);
    hostWide = await greeter('host-wide', '0.0.0.0');
    servers.push(allowed, otherPort, hostWide);
    nets = new SandboxNetworks({ ...OPTS, servicePorts: [portOf(allowed)] });
    await nets.init();
    a = await nets.setup(newKey(), lease());
    b = await nets.setup(newKey(), lease());
  });

  after(async () => {
    for (const c of children) c.kill();
    for (const s of servers) s.close();
    await nets?.remove();
    assert.deepEqual(await nets.listKeys(), []);
    assert.equal((await run('nft', ['list', 'table', 'inet', OPTS.name], { allowFail: true })).code, 1, 'table removed');
  });

  test('setup wires the lease into the namespace', async () => {
    assert.equal(a.netnsPath, `/run/netns/moattest-${a.key}`);
    assert.equal(a.serviceAddress, SERVICE);
    const addrs = JSON.parse((await run('ip', ['-n', nets.netnsName(a.key), '-j', 'addr', 'show'])).stdout) as {
      ifname: string;
      operstate: string;
      addr_info: { local: string; prefixlen: number }[];
    }[];
    const eth0 = addrs.find((l) => l.ifname === 'eth0')!;
    assert.deepEqual(
      eth0.addr_info.map((x) => `${x.local}/${x.prefixlen}`),
      [`${a.address}/31`],
    );
    assert.equal(eth0.operstate, 'UP');
    const routes = (await run('ip', ['-n', nets.netnsName(a.key), 'route', 'show', 'default'])).stdout;
    assert.match(routes, new RegExp(`default via ${a.gateway.replace(/\./g, '\\.')} dev eth0`));
  });

  test('a sandbox reaches the allowed service port and nothing else on the host', async () => {
    const hostAddrs = (JSON.parse((await run('ip', ['-j', '-4', 'addr', 'show'])).stdout) as { addr_info: { local: string }[] }[])
      .flatMap((l) => l.addr_info.map((x) => x.local))
      .filter((x) => !x.startsWith('127.')); // inside the sandbox, 127/8 is its own loopback
    assert.ok(hostAddrs.includes(SERVICE) && hostAddrs.includes(a.gateway), `host addresses: ${hostAddrs.join(', ')}`);
    const targets = [
      { host: SERVICE, port: portOf(allowed) },
      { host: SERVICE, port: portOf(otherPort) },
      ...hostAddrs.map((host) => ({ host, port: portOf(hostWide) })),
    ];
    const r = await probe(a.netnsPath, targets);
    assert.equal(r[0], 'ok:allowed');
    assert.equal(r[1], 'ECONNREFUSED', 'another port of the service address is refused at once');
    for (const [i, t] of targets.entries()) if (i > 1) assert.notEqual(r[i]?.slice(0, 3), 'ok:', `${t.host}:${t.port} must be unreachable, got ${r[i]}`);
    // The same listener answers from the host itself, so the failures above are the firewall's.
    assert.equal((await probe(undefined, [{ host: SERVICE, port: portOf(hostWide) }]))[0], 'ok:host-wide');
  });

  test('a private address outside, which the host reaches, is rejected from a sandbox', async () => {
    // The "outside" is a namespace of this test's own, behind a veth on the host: no packet goes anywhere else.
    const [ns, hostIf, nsIf] = ['moattest-out', 'xout-h', 'xout-n'];
    const [hostAddress, outside] = ['10.253.10.1', '10.253.10.2'];
    const cleanup = async () => {
      await run('ip', ['link', 'del', hostIf], { allowFail: true });
      await run('ip', ['netns', 'del', ns], { allowFail: true });
    };
    await cleanup();
    try {
      for (const args of [
        ['netns', 'add', ns],
        ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf],
        ['link', 'set', nsIf, 'netns', ns],
        ['addr', 'add', `${hostAddress}/30`, 'dev', hostIf],
        ['link', 'set', hostIf, 'up'],
        ['-n', ns, 'addr', 'add', `${outside}/30`, 'dev', nsIf],
        ['-n', ns, 'link', 'set', nsIf, 'up'],
      ]) {
        await run('ip', args);
      }
      const listener = await greeterIn(`/run/netns/${ns}`, 'outside', 8080);
      children.push(listener);
      // A new veth may take a moment to pass traffic: the host tries until it gets through.
      let fromHost: string[] = [];
      for (let i = 0; i < 10 && fromHost[0] !== 'ok:outside'; i++) fromHost = await probe(undefined, [{ host: outside, port: 8080 }]);
      assert.deepEqual(fromHost, ['ok:outside'], 'the host reaches it');
      assert.deepEqual(await probe(a.netnsPath, [{ host: outside, port: 8080 }]), ['EHOSTUNREACH']);
      listener.kill();
    } finally {
      await cleanup();
    }
  });

  test('sandboxes cannot reach each other, and the host cannot reach into them', async () => {
    children.push(await greeterIn(b.netnsPath, 'inside-b', 7000));
    assert.deepEqual(await probe(b.netnsPath, [{ host: '127.0.0.1', port: 7000 }]), ['ok:inside-b'], 'the listener works');
    const fromA = await probe(a.netnsPath, [
      { host: b.address, port: 7000 },
      { host: b.gateway, port: portOf(hostWide) },
    ]);
    assert.equal(fromA[0], 'EHOSTUNREACH');
    assert.notEqual(fromA[1]!.slice(0, 3), 'ok:');
    assert.equal((await probe(undefined, [{ host: b.address, port: 7000 }], 1000))[0], 'timeout');
  });

  test('spoofed source addresses are dropped', async () => {
    const ns = nets.netnsName(a.key);
    await run('ip', ['-n', ns, 'addr', 'add', '10.231.200.1/32', 'dev', 'eth0']);
    await run('ip', ['-n', ns, 'addr', 'add', `${b.address}/32`, 'dev', 'eth0']);
    try {
      const r = await probe(a.netnsPath, [
        { host: SERVICE, port: portOf(allowed) },
        { host: SERVICE, port: portOf(allowed), localAddress: '10.231.200.1' },
        { host: SERVICE, port: portOf(allowed), localAddress: b.address },
      ]);
      assert.deepEqual(r, ['ok:allowed', 'timeout', 'timeout']);
      // A spoofed SYN that got through would leave a half-open connection, whatever happened to the reply.
      const halfOpen = await run('ss', ['-Htn', 'state', 'syn-recv', 'sport', '=', `:${portOf(allowed)}`]);
      assert.equal(halfOpen.stdout.trim(), '');
    } finally {
      await run('ip', ['-n', ns, 'addr', 'del', '10.231.200.1/32', 'dev', 'eth0']);
      await run('ip', ['-n', ns, 'addr', 'del', `${b.address}/32`, 'dev', 'eth0']);
    }
  });

  test('IPv6 has no address inside, and is dropped on the host even if configured', async () => {
    const c = await nets.setup(newKey(), lease());
    try {
      const ns = nets.netnsName(c.key);
      assert.equal((await run('ip', ['-n', ns, '-6', 'addr', 'show'])).stdout.trim(), '');
      assert.equal((await run('ip', ['-n', ns, '-6', 'route', 'show'])).stdout.trim(), '');
      assert.deepEqual(await probe(c.netnsPath, [{ host: '::1', port: portOf(allowed) }]), ['EADDRNOTAVAIL']);
      // As if the namespace were compromised: addresses on both ends of the veth.
      await run('ip', ['-n', ns, '-6', 'addr', 'add', 'fd31::2/64', 'dev', 'eth0', 'nodad']);
      await run('ip', ['-6', 'addr', 'add', 'fd31::1/64', 'dev', c.hostInterface, 'nodad']);
      const v6 = await greeter('v6', 'fd31::1');
      servers.push(v6);
      assert.equal((await probe(undefined, [{ host: 'fd31::1', port: portOf(v6) }]))[0], 'ok:v6', 'reachable from the host itself');
      assert.equal((await probe(c.netnsPath, [{ host: 'fd31::1', port: portOf(v6) }], 1000))[0], 'timeout');
    } finally {
      await nets.teardown(c.key);
    }
  });

  test('teardown leaves no veth or namespace, is idempotent, and handles half set-up state', async () => {
    const d = await nets.setup(newKey(), lease());
    assert.deepEqual(await hostState(nets, d.key), { netns: true, link: true });
    assert.ok((await nets.listKeys()).includes(d.key));
    await nets.teardown(d.key);
    await nets.teardown(d.key);
    assert.deepEqual(await hostState(nets, d.key), { netns: false, link: false });
    assert.ok(!(await nets.listKeys()).includes(d.key));

    const onlyNetns = newKey();
    await run('ip', ['netns', 'add', nets.netnsName(onlyNetns)]);
    const onlyLink = newKey();
    await run('ip', ['link', 'add', nets.hostInterface(onlyLink), 'type', 'veth', 'peer', 'name', `mt${onlyLink}p`]);
    assert.deepEqual((await nets.listKeys()).filter((k) => k === onlyNetns || k === onlyLink).sort(), [onlyLink, onlyNetns].sort());
    await nets.teardown(onlyNetns);
    await nets.teardown(onlyLink);
    assert.deepEqual(await hostState(nets, onlyNetns), { netns: false, link: false });
    assert.deepEqual(await hostState(nets, onlyLink), { netns: false, link: false });
  });

  test('setting up a key twice fails without harming the first', async () => {
    const key = newKey();
    const results = await Promise.allSettled([nets.setup(key, lease()), nets.setup(key, lease())]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, JSON.stringify(results.map((r) => r.status)));
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.match(String(failed.reason), /exists/);
    const won = (results.find((r) => r.status === 'fulfilled') as PromiseFulfilledResult<SandboxNetwork>).value;
    assert.deepEqual(await hostState(nets, key), { netns: true, link: true });
    assert.deepEqual(await probe(won.netnsPath, [{ host: SERVICE, port: portOf(allowed) }]), ['ok:allowed']);
    await assert.rejects(nets.setup(key, lease()), /already exists/);
    await nets.teardown(key);
  });

  test('after a crash, a new instance re-initialises in place and cleans up orphans only', async () => {
    const kept = await nets.setup(newKey(), lease());
    const orphan = await nets.setup(newKey(), lease());
    const halfNetns = newKey();
    await run('ip', ['netns', 'add', nets.netnsName(halfNetns)]);

    const restarted = new SandboxNetworks({ ...OPTS, servicePorts: [portOf(allowed)] });
    await restarted.init();
    const removed = await restarted.cleanup([a.key, b.key, kept.key]);
    assert.deepEqual(removed.sort(), [orphan.key, halfNetns].sort());
    assert.deepEqual(await hostState(nets, orphan.key), { netns: false, link: false });
    assert.deepEqual(await hostState(nets, halfNetns), { netns: false, link: false });
    assert.deepEqual(await hostState(nets, kept.key), { netns: true, link: true });
    assert.deepEqual(
      await probe(kept.netnsPath, [
        { host: SERVICE, port: portOf(allowed) },
        { host: SERVICE, port: portOf(otherPort) },
      ]),
      ['ok:allowed', 'ECONNREFUSED'],
    );
    await nets.teardown(kept.key);
  });

  test('20 concurrent setups get distinct addresses, all of which work', async () => {
    const want = Array.from({ length: 20 }, () => ({ key: newKey(), lease: lease() }));
    const got = await Promise.all(want.map((w) => nets.setup(w.key, w.lease)));
    try {
      assert.equal(new Set(got.map((g) => g.address)).size, 20);
      for (const [i, g] of got.entries()) {
        const addrs = JSON.parse((await run('ip', ['-n', nets.netnsName(g.key), '-j', '-4', 'addr', 'show', 'dev', 'eth0'])).stdout) as {
          addr_info: { local: string }[];
        }[];
        assert.deepEqual(
          addrs[0]!.addr_info.map((x) => x.local),
          [want[i]!.lease],
        );
      }
      const r = await Promise.all(got.filter((_, i) => i % 5 === 0).map((g) => probe(g.netnsPath, [{ host: SERVICE, port: portOf(allowed) }])));
      assert.deepEqual(r.flat(), ['ok:allowed', 'ok:allowed', 'ok:allowed', 'ok:allowed']);
    } finally {
      await Promise.all(got.map((g) => nets.teardown(g.key)));
    }
    const left = new Set(await nets.listKeys());
    assert.ok(want.every((w) => !left.has(w.key)));
  });

  test('setup needs init first; installed() notices a flushed ruleset', async () => {
    const fresh = new SandboxNetworks({ ...OPTS, servicePorts: [portOf(allowed)] });
    await assert.rejects(fresh.setup(newKey(), lease()), /init\(\) must succeed before setup\(\)/);
    assert.equal(await nets.installed(), true);
    await run('nft', ['delete', 'table', 'inet', OPTS.name]);
    assert.equal(await nets.installed(), false);
    await nets.init();
    assert.equal(await nets.installed(), true);
    assert.deepEqual(
      await probe(a.netnsPath, [
        { host: SERVICE, port: portOf(allowed) },
        { host: SERVICE, port: portOf(otherPort) },
      ]),
      ['ok:allowed', 'ECONNREFUSED'],
    );
  });

  test('init refuses host interfaces that look like sandbox ends', async () => {
    await run('ip', ['link', 'add', 'mtforeign', 'type', 'veth', 'peer', 'name', 'mtforeignp']);
    try {
      await assert.rejects(new SandboxNetworks({ ...OPTS, servicePorts: [] }).init(), /starts with the sandbox interface prefix/);
    } finally {
      await run('ip', ['link', 'del', 'mtforeign']);
    }
  });
});
