import { lookup as dnsLookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import { isIpLiteral } from '@moat/core';

/**
 * Where a name may take a sandbox. Only public unicast addresses that are
 * not this host's own: no private, loopback, link-local (cloud metadata),
 * CGNAT, unspecified, multicast, reserved, ULA, NAT64 or 6to4 ranges, with
 * IPv4-mapped IPv6 judged as the IPv4 it carries.
 */
export function addressClass(address: string): string {
  if (!ipaddr.isValid(address)) return 'invalid';
  const a = ipaddr.process(address);
  const range = a.range();
  if (range !== 'unicast') return range;
  // IPv4-compatible ::a.b.c.d (deprecated) can be tunnelled to the IPv4 address: never public.
  if (a.kind() === 'ipv6' && (a as ipaddr.IPv6).parts.slice(0, 6).every((p) => p === 0)) return 'ipv4Compatible';
  return hostAddresses().has(a.toString()) ? 'this host' : 'unicast';
}

export const isPublicAddress = (address: string) => addressClass(address) === 'unicast';

let cached: { at: number; set: Set<string> } | undefined;

/** This host's addresses; re-read at most once a second (hosts with many sandboxes have many interfaces). */
function hostAddresses(): Set<string> {
  const now = performance.now();
  if (!cached || now - cached.at > 1000) {
    const set = new Set<string>();
    for (const list of Object.values(networkInterfaces())) {
      for (const i of list ?? []) {
        const bare = i.address.split('%')[0]!;
        if (ipaddr.isValid(bare)) set.add(ipaddr.process(bare).toString());
      }
    }
    cached = { at: now, set };
  }
  return cached.set;
}

/** The source address of a connection as identify() sees it: IPv4-mapped IPv6 as plain IPv4. */
export function normalizeAddress(address: string): string {
  return ipaddr.isValid(address) ? ipaddr.process(address).toString() : address;
}

export async function systemLookup(host: string): Promise<string[]> {
  return (await dnsLookup(host, { all: true, verbatim: true })).map((r) => r.address);
}

export type Resolution = { ok: true; address: string } | { ok: false; status: 403 | 502; reason: string };

/**
 * Picks the address to connect to, once: the connection goes to exactly this
 * address, so a name cannot resolve to something else between check and use.
 */
export async function resolveDestination(
  host: string,
  opts: { pinned: Map<string, string>; lookup: (host: string) => Promise<string[]>; explicitIpRule: boolean },
): Promise<Resolution> {
  const pinned = opts.pinned.get(host);
  if (pinned !== undefined) return { ok: true, address: pinned };
  if (isIpLiteral(host)) {
    if (opts.explicitIpRule) return { ok: true, address: host };
    const cls = addressClass(host);
    if (cls === 'unicast') return { ok: true, address: host };
    return { ok: false, status: 403, reason: `${host} is not a public address (${cls}); only an allow rule naming this IP literal permits it` };
  }
  let addresses: string[];
  try {
    addresses = await opts.lookup(host);
  } catch (err) {
    return { ok: false, status: 502, reason: `cannot resolve ${host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
  if (!addresses.length) return { ok: false, status: 502, reason: `cannot resolve ${host}: no addresses` };
  const usable = addresses.find(isPublicAddress);
  if (usable !== undefined) return { ok: true, address: usable };
  const shown = addresses
    .slice(0, 4)
    .map((a) => `${a} (${addressClass(a)})`)
    .join(', ');
  return { ok: false, status: 403, reason: `${host} resolves to ${shown}, not a public address` };
}
