import { isIPv4 } from 'node:net';

/**
 * Sandbox addresses: each sandbox leases a /31 of the Moat subnet (RFC 3021
 * point-to-point, so no address is lost to network and broadcast). The even
 * address is the host end of its veth and its default gateway; the odd one is
 * the sandbox's own. A lease is the sandbox's address as a string; the
 * integrator stores it (unique) and passes the set in use to allocateLease.
 */
export const LEASE_PREFIX_LENGTH = 31;

export const DEFAULT_SUBNET = '10.200.0.0/16';
export const DEFAULT_SERVICE_ADDRESS = '10.200.0.1';

export interface AddressPool {
  subnet: string;
  network: number;
  prefixLength: number;
  serviceAddress: string;
  /** The /31 holding the service address, when it lies inside the subnet: never leased. */
  reservedBlock?: number;
}

export interface LeaseAddresses {
  /** The sandbox's address (its `eth0`). */
  address: string;
  /** The host end of its veth: its default route. */
  gateway: string;
  prefixLength: number;
}

// Ranges no sandbox subnet or service address may touch: they mean something else to every host.
const SPECIAL: [string, number][] = [
  ['0.0.0.0', 8],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
];

export function ipv4ToInt(a: string): number {
  if (!isIPv4(a)) throw new Error(`"${a}" is not an IPv4 address`);
  return a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

export function intToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

const blockSize = (prefixLength: number) => 2 ** (32 - prefixLength);
const overlaps = (a: number, alen: number, b: number, blen: number) => {
  const len = Math.min(alen, blen);
  return Math.floor(a / blockSize(len)) === Math.floor(b / blockSize(len));
};

/** Validates a subnet and service address; throws with the reason when they cannot work. */
export function addressPool(subnet = DEFAULT_SUBNET, serviceAddress = DEFAULT_SERVICE_ADDRESS): AddressPool {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(subnet);
  if (!m || !isIPv4(m[1]!)) throw new Error(`sandbox subnet "${subnet}" is not an IPv4 CIDR like ${DEFAULT_SUBNET}`);
  const network = ipv4ToInt(m[1]!);
  const prefixLength = Number(m[2]);
  if (prefixLength < 8 || prefixLength > 30) throw new Error(`sandbox subnet "${subnet}": the prefix length must be between /8 and /30`);
  if (network % blockSize(prefixLength) !== 0) throw new Error(`sandbox subnet "${subnet}" has host bits set`);
  if (!isIPv4(serviceAddress)) throw new Error(`service address "${serviceAddress}" is not an IPv4 address`);
  const service = ipv4ToInt(serviceAddress);
  for (const [a, len] of SPECIAL) {
    const base = ipv4ToInt(a);
    if (overlaps(network, prefixLength, base, len)) throw new Error(`sandbox subnet "${subnet}" overlaps the special range ${a}/${len}`);
    if (overlaps(service, 32, base, len)) throw new Error(`service address "${serviceAddress}" is in the special range ${a}/${len}`);
  }
  const pool: AddressPool = { subnet: `${intToIpv4(network)}/${prefixLength}`, network, prefixLength, serviceAddress };
  if (overlaps(network, prefixLength, service, 32)) pool.reservedBlock = Math.floor((service - network) / 2);
  return pool;
}

export const poolCapacity = (pool: AddressPool) => blockSize(pool.prefixLength) / 2 - (pool.reservedBlock === undefined ? 0 : 1);

function blockOf(pool: AddressPool, address: string): number | undefined {
  if (!isIPv4(address)) return undefined;
  const off = ipv4ToInt(address) - pool.network;
  return off >= 0 && off < blockSize(pool.prefixLength) ? Math.floor(off / 2) : undefined;
}

export const poolContains = (pool: AddressPool, address: string) => blockOf(pool, address) !== undefined;

/** The lowest free lease, given the leases in use (addresses outside the pool are ignored). */
export function allocateLease(pool: AddressPool, inUse: Iterable<string>): string {
  const used = new Set<number>();
  for (const a of inUse) {
    const b = blockOf(pool, a);
    if (b !== undefined) used.add(b);
  }
  const blocks = blockSize(pool.prefixLength) / 2;
  for (let b = 0; b < blocks; b++) {
    if (b !== pool.reservedBlock && !used.has(b)) return intToIpv4(pool.network + 2 * b + 1);
  }
  throw new Error(`sandbox subnet ${pool.subnet} is exhausted (${poolCapacity(pool)} leases in use)`);
}

/** The addresses of a lease; throws when it is not one this pool can hand out. */
export function leaseAddresses(pool: AddressPool, lease: string): LeaseAddresses {
  const b = blockOf(pool, lease);
  if (b === undefined || b === pool.reservedBlock || ipv4ToInt(lease) % 2 !== 1) {
    throw new Error(`"${lease}" is not a sandbox lease in ${pool.subnet}`);
  }
  return { address: lease, gateway: intToIpv4(ipv4ToInt(lease) - 1), prefixLength: LEASE_PREFIX_LENGTH };
}
