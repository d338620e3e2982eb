import { existsSync } from 'node:fs';
import { EgressProxy, type EgressLimits, type EgressRecord, type EgressSandbox } from '@moat/gateway';
import { SandboxNetworks, allocateLease, networkKey, type SandboxNetwork } from '@moat/runtime';
import type { Logger } from 'pino';
import { isLive, type Store } from './store/store.js';

export interface NetworkOptions {
  /** Sandbox /31s come from here. Default 10.200.0.0/16. */
  subnet?: string;
  /** Host address of the egress proxy. Default 10.200.0.1. */
  serviceAddress?: string;
  /** Names the host state (nft table, namespaces, service interface). Default `moat`. */
  name?: string;
  /** Host ends of sandbox veths. Default `mh`. */
  ifPrefix?: string;
  /** Default 3128. */
  proxyPort?: number;
  /** The API gateway's port on the service address. Default: the proxy's port + 1. */
  gatewayPort?: number;
  /** Operator-trusted name → address map for the proxy (like /etc/hosts); `MOAT_EGRESS_HOSTS=name=addr,...` too. */
  pinnedHosts?: Record<string, string>;
  /** Name resolution for the proxy; the system resolver by default (tests inject one). */
  lookup?(host: string): Promise<string[]>;
  /** Per-sandbox egress limits when a sandbox sets none. */
  defaultLimits?: Partial<EgressLimits>;
}

export interface SandboxNetworkInfo {
  address: string;
  proxy: string;
}

/**
 * Sandboxes' networks and the egress proxy. A sandbox's only way out is TCP
 * to the proxy on the service address; the proxy knows the sandbox by its
 * leased source address and applies its egress policy.
 */
export class Networking {
  /** address → sandbox uid, for the proxy's identify(). */
  private readonly byAddress = new Map<string, string>();

  private constructor(
    private readonly nets: SandboxNetworks,
    private readonly proxy: EgressProxy,
    private readonly store: Store,
  ) {}

  /** `audit` sees every egress decision after it is stored. */
  static async start(opts: NetworkOptions, store: Store, log: Logger, audit: (record: EgressRecord) => Promise<void>): Promise<Networking> {
    const port = opts.proxyPort ?? 3128;
    const nets = new SandboxNetworks({
      servicePorts: [port, gatewayPort(opts)],
      subnet: opts.subnet,
      serviceAddress: opts.serviceAddress,
      name: opts.name,
      ifPrefix: opts.ifPrefix,
    });
    await nets.init();
    let self: Networking | undefined;
    const proxy = await EgressProxy.start({
      host: nets.serviceAddress,
      port,
      identify: (address) => self?.identify(address),
      onDecision: (record: EgressRecord) =>
        void store
          .addEgress(record)
          .then(() => audit(record))
          .catch((err: unknown) => log.error({ err }, 'could not record an egress decision')),
      pinnedHosts: pinnedHosts(opts),
      ...(opts.lookup ? { lookup: opts.lookup } : {}),
      ...(opts.defaultLimits ? { defaultLimits: opts.defaultLimits } : {}),
    });
    self = new Networking(nets, proxy, store);
    for (const l of await store.leases()) self.byAddress.set(l.address, l.sandbox_uid);
    return self;
  }

  get proxyUrl(): string {
    return this.proxy.url;
  }

  /** Where sandboxes reach the egress proxy and the API gateway. */
  get serviceAddress(): string {
    return this.nets.serviceAddress;
  }

  /** The uid of the sandbox that holds this address, if one does. */
  sandboxAt(address: string): string | undefined {
    return this.byAddress.get(address);
  }

  /** Where a sandbox's namespace is, known before it exists. */
  netnsPath(uid: string): string {
    return this.nets.netnsPath(networkKey(uid));
  }

  /** Whether the sandbox's namespace exists: a hibernation keeps it, only a host reboot loses it. */
  attached(uid: string): boolean {
    return existsSync(this.netnsPath(uid));
  }

  /**
   * The sandbox's namespace, with its lease (kept across restarts of the
   * sandbox). Rebuilt from scratch so a namespace left by a crash is not reused half-made.
   */
  async attach(uid: string): Promise<SandboxNetwork> {
    const key = networkKey(uid);
    const leases = await this.store.leases();
    let lease = leases.find((l) => l.sandbox_uid === uid)?.address;
    for (let inUse = leases.map((l) => l.address); !lease; inUse = (await this.store.leases()).map((l) => l.address)) {
      const candidate = allocateLease(this.nets.pool, inUse);
      if (await this.store.insertLease(candidate, uid)) lease = candidate;
    }
    this.byAddress.set(lease, uid);
    if (existsSync(this.nets.netnsPath(key)) || existsSync(`/sys/class/net/${this.nets.hostInterface(key)}`)) await this.nets.teardown(key);
    return this.nets.setup(key, lease);
  }

  async detach(uid: string): Promise<void> {
    await this.nets.teardown(networkKey(uid));
    for (const [address, owner] of this.byAddress) if (owner === uid) this.byAddress.delete(address);
    await this.store.releaseLease(uid);
  }

  /** After a restart: remove namespaces and leases of sandboxes no record points to. */
  async cleanup(knownUids: string[]): Promise<void> {
    const known = new Set(knownUids);
    await this.nets.cleanup(knownUids.map(networkKey));
    for (const l of await this.store.leases()) if (!known.has(l.sandbox_uid)) await this.detach(l.sandbox_uid);
  }

  env(): Record<string, string> {
    return proxyEnv(this.proxy.url);
  }

  /**
   * A host firewall reload that flushes the whole ruleset removes Moat's
   * table and would leave sandboxes open to the host: put it back.
   */
  async ensureFirewall(log: Logger): Promise<void> {
    if (await this.nets.installed()) return;
    log.warn('the sandbox firewall table was removed (a host firewall reload?); installing it again');
    await this.nets.init();
  }

  async close(): Promise<void> {
    await this.proxy.close();
  }

  private async identify(address: string): Promise<EgressSandbox | undefined> {
    const uid = this.byAddress.get(address);
    const found = uid ? await this.store.getSandboxByUid(uid) : undefined;
    if (!found || !isLive(found.desired)) return undefined;
    const s = found.sandbox;
    return {
      uid: s.metadata.uid,
      name: s.metadata.name,
      namespace: s.metadata.namespace,
      owner: s.metadata.namespace,
      policy: s.spec.egressPolicy ?? { mode: 'deny-all' },
      ...(s.spec.egressLimits ? { limits: s.spec.egressLimits } : {}),
    };
  }
}

/** What a sandbox's processes need to find the proxy; curl, pip, npm and git read these. */
export function proxyEnv(url: string): Record<string, string> {
  return { HTTP_PROXY: url, HTTPS_PROXY: url, http_proxy: url, https_proxy: url, NO_PROXY: 'localhost,127.0.0.1', no_proxy: 'localhost,127.0.0.1' };
}

export const gatewayPort = (opts: NetworkOptions) => opts.gatewayPort ?? (opts.proxyPort ?? 3128) + 1;

/** Operator-trusted name → address pins, for the egress proxy and the API gateway's upstreams. */
export const pinnedHosts = (opts: NetworkOptions): Record<string, string> => ({ ...pinnedFromEnv(), ...opts.pinnedHosts });

/** `MOAT_EGRESS_HOSTS=api.internal=10.1.2.3,pypi.mirror=10.1.2.4` */
function pinnedFromEnv(): Record<string, string> {
  const raw = process.env.MOAT_EGRESS_HOSTS;
  if (!raw) return {};
  return Object.fromEntries(
    raw.split(',').map((pair) => {
      const [name, address] = pair.split('=');
      if (!name || !address) throw new Error(`MOAT_EGRESS_HOSTS: "${pair}" is not name=address`);
      return [name.trim(), address.trim()];
    }),
  );
}
