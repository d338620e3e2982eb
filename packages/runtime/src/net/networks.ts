import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { run } from '../run.js';
import { addressPool, leaseAddresses, poolContains, type AddressPool } from './ipam.js';
import { assertNetworkKey } from './keys.js';
import { renderRuleset } from './ruleset.js';
import { runScript } from '../shell.js';

/** Where `ip netns` keeps named namespaces (fixed when iproute2 is built). */
export const NETNS_DIR = '/run/netns';

export interface SandboxNetworksOptions {
  /** TCP ports sandboxes may reach on the service address (egress proxy, gateway). */
  servicePorts: number[];
  /** Sandbox addresses are /31s of this subnet. Default 10.200.0.0/16. */
  subnet?: string;
  /** The host address the egress proxy and gateway listen on. Default 10.200.0.1. */
  serviceAddress?: string;
  /**
   * Names the host state: nft table `inet <name>`, service interface
   * `<name>0`, namespaces `<name>-<key>`. Default `moat`.
   */
  name?: string;
  /** Host ends of sandbox veths are `<ifPrefix><key>`; every interface with this prefix is treated as a sandbox's. Default `mh`. */
  ifPrefix?: string;
}

export interface SandboxNetwork {
  key: string;
  /** Give this to the OCI runtime as the network namespace path. */
  netnsPath: string;
  /** The sandbox's address (its `eth0`). */
  address: string;
  /** Its default route: the host end of its veth. */
  gateway: string;
  /** Where the egress proxy and gateway listen. */
  serviceAddress: string;
  /** The host end of its veth. */
  hostInterface: string;
}

// What `ip -force -batch` says about state that is already gone; anything else is a real failure.
const ABSENT = [/^Cannot find device /, /^Cannot remove namespace file .*No such file or directory/, /^Command failed /];

/**
 * Per-sandbox network namespaces behind a default-deny nftables table.
 *
 * Each sandbox gets the named namespace `/run/netns/<name>-<key>` with `lo`
 * and `eth0`, the sandbox end of a veth whose host end is `<ifPrefix><key>`,
 * a /31 lease from the subnet and a default route through the host end. No IPv6
 * address exists inside. From there it can open TCP connections to the service
 * ports of the service address (on the host interface `<name>0`) and nothing
 * else; see ruleset.ts. The OCI runtime joins the namespace by path. The
 * namespace belongs to the host's user namespace, so a sandbox's root (root
 * only in its own user namespace) cannot change its addresses, routes or
 * sysctls.
 *
 * Lifecycle for an integrator:
 * - server start: `init()` (idempotent), then `cleanup(keysOfKnownSandboxes)`.
 *   Namespaces of sandboxes that survived a restart keep working throughout.
 * - sandbox create: `setup(networkKey(uid), allocateLease(pool, leasesInUse))`,
 *   then run the sandbox in the returned `netnsPath`. A failed setup leaves nothing.
 * - sandbox delete: `teardown(key)` (idempotent), then release the lease.
 * - sandbox restart: keep the namespace; or `teardown` then `setup` again.
 * - uninstall: `remove()` tears down every sandbox network, then the table and interface.
 * Requires root, iproute2, nftables (with fib) and sh.
 */
export class SandboxNetworks {
  readonly pool: AddressPool;
  readonly name: string;
  readonly ifPrefix: string;
  readonly table: string;
  readonly serviceInterface: string;
  readonly servicePorts: number[];
  private initialized = false;

  constructor(opts: SandboxNetworksOptions) {
    this.name = opts.name ?? 'moat';
    this.ifPrefix = opts.ifPrefix ?? 'mh';
    if (!/^[a-z][a-z0-9]{0,9}$/.test(this.name)) throw new Error(`network name "${this.name}" must be 1-10 lower-case letters and digits`);
    // Prefix plus a 12-digit key must fit the kernel's 15-character interface names.
    if (!/^[a-z]{1,3}$/.test(this.ifPrefix)) throw new Error(`interface prefix "${this.ifPrefix}" must be 1-3 lower-case letters`);
    if (`${this.name}0`.startsWith(this.ifPrefix)) throw new Error(`interface prefix "${this.ifPrefix}" would cover the service interface ${this.name}0`);
    for (const p of opts.servicePorts) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`service port ${p} is not a TCP port`);
    this.pool = addressPool(opts.subnet, opts.serviceAddress);
    this.table = this.name;
    this.serviceInterface = `${this.name}0`;
    this.servicePorts = [...opts.servicePorts];
  }

  get serviceAddress(): string {
    return this.pool.serviceAddress;
  }

  netnsName(key: string): string {
    return `${this.name}-${key}`;
  }

  netnsPath(key: string): string {
    return `${NETNS_DIR}/${this.netnsName(key)}`;
  }

  hostInterface(key: string): string {
    return `${this.ifPrefix}${key}`;
  }

  /** Creates the service interface and (re)installs the nft table atomically. Safe at every server start. */
  async init(): Promise<void> {
    await this.checkHost();
    await this.ensureServiceInterface();
    await run('nft', ['-f', '-'], {
      input: renderRuleset({
        table: this.table,
        ifPrefix: this.ifPrefix,
        subnet: this.pool.subnet,
        serviceAddress: this.serviceAddress,
        serviceInSubnet: this.pool.reservedBlock !== undefined,
        servicePorts: this.servicePorts,
      }),
    });
    this.initialized = true;
  }

  /**
   * Whether the table is still there. A firewall reload that flushes the whole
   * ruleset (`flush ruleset`) removes it and leaves sandboxes open to the host:
   * check now and then, and run init() again when this is false.
   */
  async installed(): Promise<boolean> {
    return (await run('nft', ['list', 'chain', 'inet', this.table, 'from_sandbox'], { allowFail: true })).code === 0;
  }

  /** Creates the sandbox's namespace and veth with its lease; a failure leaves nothing behind. */
  async setup(key: string, lease: string): Promise<SandboxNetwork> {
    assertNetworkKey(key);
    // Without the table a sandbox would be open to the host: never create one before it.
    if (!this.initialized) throw new Error('SandboxNetworks.init() must succeed before setup()');
    const { address, gateway, prefixLength } = leaseAddresses(this.pool, lease);
    const ns = this.netnsName(key);
    const hostIf = this.hostInterface(key);
    if (existsSync(this.netnsPath(key)) || existsSync(`/sys/class/net/${hostIf}`)) {
      throw new Error(`the network of sandbox ${key} already exists (set up twice, or two sandbox UIDs share the key): tear it down first`);
    }
    const ipv6 = existsSync('/proc/sys/net/ipv6');
    // One process tree instead of one spawn per step: spawning dominates the cost. All values are validated names and addresses.
    // No IPv6 inside: no address is generated on either end and loopback's ::1 is removed (nft drops IPv6 from sandboxes anyway).
    const script = [
      'set -e',
      "ip -batch - <<'EOF'",
      `netns add ${ns}`,
      `link add ${hostIf} type veth peer name eth0 netns ${ns}`,
      ...(ipv6 ? [`link set ${hostIf} addrgenmode none`] : []),
      `addr add ${gateway}/${prefixLength} dev ${hostIf}`,
      `link set ${hostIf} up`,
      'EOF',
      `ip -n ${ns} -batch - <<'EOF'`,
      'link set lo up',
      ...(ipv6 ? ['addr del ::1/128 dev lo', 'link set eth0 addrgenmode none'] : []),
      `addr add ${address}/${prefixLength} dev eth0`,
      'link set eth0 up',
      `route add default via ${gateway}`,
      'EOF',
    ].join('\n');
    let failure: string | undefined;
    try {
      const r = await runScript(script);
      if (r.code !== 0) failure = r.output.trim() || `exit ${r.code}`;
    } catch (err) {
      failure = (err as Error).message;
    }
    if (failure !== undefined) {
      // Undo only what this call created: a concurrent setup of the same key may own the rest.
      const createdNothing = /Cannot create namespace file .*File exists/.test(failure);
      const vethTaken = /RTNETLINK answers: File exists/.test(failure);
      if (vethTaken) await run('ip', ['netns', 'del', ns], { allowFail: true });
      else if (!createdNothing) await this.teardownKeys([key]).catch(() => {});
      throw new Error(`setting up the network of sandbox ${key} failed: ${failure}`);
    }
    return { key, netnsPath: this.netnsPath(key), address, gateway, serviceAddress: this.serviceAddress, hostInterface: hostIf };
  }

  /** Removes the sandbox's veth and namespace, whichever exist. */
  async teardown(key: string): Promise<void> {
    await this.teardownKeys([assertNetworkKey(key)]);
  }

  /** Keys with host state: a namespace or a veth host end. */
  async listKeys(): Promise<string[]> {
    const nsRe = new RegExp(`^${this.name}-([0-9a-f]{12})$`);
    const ifRe = new RegExp(`^${this.ifPrefix}([0-9a-f]{12})$`);
    const [names, links] = await Promise.all([readdir(NETNS_DIR).catch(() => [] as string[]), this.linkNames()]);
    const keys = [...names.map((n) => nsRe.exec(n)?.[1]), ...links.map((l) => ifRe.exec(l)?.[1])].filter((k) => k !== undefined);
    return [...new Set(keys)].sort();
  }

  /** Tears down every key with host state that is not in knownKeys (crash recovery); returns the keys removed. */
  async cleanup(knownKeys: Iterable<string>): Promise<string[]> {
    const known = new Set(knownKeys);
    const orphans = (await this.listKeys()).filter((k) => !known.has(k));
    if (orphans.length) await this.teardownKeys(orphans);
    return orphans;
  }

  /**
   * Tears down every sandbox network, then drops the table and the service
   * interface. The veths go first: without the table they would be open.
   */
  async remove(): Promise<void> {
    await this.cleanup([]);
    await run('nft', ['delete', 'table', 'inet', this.table], { allowFail: true });
    await run('ip', ['link', 'del', this.serviceInterface], { allowFail: true });
    if ((await this.linkNames()).includes(this.serviceInterface)) throw new Error(`could not delete interface ${this.serviceInterface}`);
  }

  private async teardownKeys(keys: string[]): Promise<void> {
    // Deleting the host end deletes both ends now; the namespace's own cleanup would do it later, asynchronously.
    const lines = keys.flatMap((k) => [`link del ${this.hostInterface(k)}`, `netns del ${this.netnsName(k)}`]);
    const r = await runScript(["ip -force -batch - <<'EOF'", ...lines, 'EOF'].join('\n'));
    const errors = r.output.split('\n').filter((l) => l.trim() && !ABSENT.some((re) => re.test(l)));
    if (errors.length) throw new Error(`tearing down the networks of sandboxes ${keys.join(', ')} failed: ${errors.join('; ')}`);
  }

  private async linkNames(): Promise<string[]> {
    const r = await run('ip', ['-j', 'link', 'show']);
    return (JSON.parse(r.stdout) as { ifname: string }[]).map((l) => l.ifname);
  }

  /** Refuses to take over host interfaces or addresses that are not Moat's. */
  private async checkHost(): Promise<void> {
    const r = await run('ip', ['-j', 'addr', 'show']);
    const links = JSON.parse(r.stdout) as { ifname: string; addr_info?: { family: string; local: string }[] }[];
    const ours = new RegExp(`^(${this.ifPrefix}[0-9a-f]{12}|${this.serviceInterface})$`);
    for (const l of links) {
      if (ours.test(l.ifname)) continue;
      if (l.ifname.startsWith(this.ifPrefix)) {
        throw new Error(`host interface ${l.ifname} starts with the sandbox interface prefix "${this.ifPrefix}": the firewall would treat it as a sandbox's`);
      }
      for (const a of l.addr_info ?? []) {
        if (a.family === 'inet' && (poolContains(this.pool, a.local) || a.local === this.serviceAddress)) {
          throw new Error(
            `host interface ${l.ifname} has address ${a.local}, inside Moat's sandbox subnet ${this.pool.subnet} or service address: configure others`,
          );
        }
      }
    }
  }

  private async ensureServiceInterface(): Promise<void> {
    const dev = this.serviceInterface;
    if ((await run('ip', ['link', 'show', 'dev', dev], { allowFail: true })).code !== 0) {
      const r = await run('ip', ['link', 'add', dev, 'type', 'dummy'], { allowFail: true });
      if (r.code !== 0 && /Unknown device type/.test(r.stderr)) {
        // Kernels built without the dummy driver: a bridge without ports holds a local address just as well.
        await run('ip', ['link', 'add', dev, 'type', 'bridge']);
      } else if (r.code !== 0 && !/File exists/.test(r.stderr)) {
        throw new Error(`ip link add ${dev} type dummy failed: ${r.stderr.trim()}`);
      }
    }
    const ipv6 = existsSync('/proc/sys/net/ipv6');
    await run('ip', ['-batch', '-'], {
      input: [
        ...(ipv6 ? [`link set ${dev} addrgenmode none`] : []),
        `addr flush dev ${dev}`,
        `addr add ${this.serviceAddress}/32 dev ${dev}`,
        `link set ${dev} up`,
      ].join('\n'),
    });
  }
}
