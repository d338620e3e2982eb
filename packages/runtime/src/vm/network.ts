import { run } from '../run.js';

/** The guest's NICs: the sandbox network (its MAC is the veth end's in the namespace, see plugVmNetwork) and the control link. */
export const MAIN_MAC = '52:54:00:6d:00:01';
export const CONTROL_MAC = '52:54:00:6d:00:02';
export const MAIN_TAP = 'vm0';
export const CONTROL_TAP = 'vmc';
/** moat-init in the guest listens here; only the sandbox's own namespace has a route to it. */
export const GUEST_AGENT = { host: '169.254.0.2', port: 1024 };

export interface GuestAddress {
  /** CIDR, e.g. 10.200.0.3/31. */
  address: string;
  gateway: string;
}

/**
 * Puts the guest on the sandbox's network without changing anything the host
 * sees: inside the sandbox's namespace, a tap for QEMU is spliced to the veth
 * end (eth0) with tc mirred in both directions, so frames pass through
 * untouched and the host's firewall, proxy and leases apply as they are. The
 * guest takes eth0's address; eth0 takes the guest's fixed MAC, since a
 * resumed snapshot cannot change it. A second tap, with a link-local /30,
 * carries the host's connections to the guest agent.
 */
export async function plugVmNetwork(netnsPath: string): Promise<GuestAddress> {
  const script = `
set -e
ip link show ${MAIN_TAP} >/dev/null 2>&1 || ip tuntap add dev ${MAIN_TAP} mode tap
ip link show ${CONTROL_TAP} >/dev/null 2>&1 || ip tuntap add dev ${CONTROL_TAP} mode tap
ip link set eth0 address ${MAIN_MAC}
ip link set ${MAIN_TAP} up
for pair in "eth0 ${MAIN_TAP}" "${MAIN_TAP} eth0"; do
  set -- $pair
  tc qdisc del dev $1 ingress 2>/dev/null || true
  tc qdisc add dev $1 ingress
  tc filter add dev $1 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev $2
done
ip addr replace 169.254.0.1/30 dev ${CONTROL_TAP}
ip link set ${CONTROL_TAP} up
ip -4 -o addr show dev eth0
ip -4 route show default
`;
  const r = await run('nsenter', [`--net=${netnsPath}`, 'sh', '-c', script]);
  const address = /inet (\S+)/.exec(r.stdout)?.[1];
  const gateway = /default via (\S+)/.exec(r.stdout)?.[1];
  if (!address || !gateway) throw new Error(`sandbox network namespace ${netnsPath} has no address or default route on eth0`);
  return { address, gateway };
}
