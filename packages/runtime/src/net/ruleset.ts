/**
 * The nftables table that confines sandboxes. Everything arriving on a
 * sandbox's host end (`<ifPrefix>*`) is denied except TCP to the service
 * address on the service ports, from the address leased to that interface;
 * nothing is forwarded to or from sandboxes, and the host itself cannot open
 * connections into them. Denials that reach the sandbox are rejections, so
 * code that ignores HTTP_PROXY fails at once instead of hanging.
 *
 * Anti-spoofing needs no per-sandbox state: a source address passes only if
 * the host's route back to it leaves through the interface the packet came
 * in on (strict reverse path). Through a host end the only such address is
 * its sandbox's lease; the other address of the /31 is the host's own, whose
 * route is local, so it fails too.
 */
export interface RulesetInput {
  table: string;
  ifPrefix: string;
  subnet: string;
  serviceAddress: string;
  /** Whether the subnet already covers the service address. */
  serviceInSubnet: boolean;
  servicePorts: number[];
}

/** A whole-table script for `nft -f`: applied as one transaction, it replaces any previous version of the table. */
export function renderRuleset(i: RulesetInput): string {
  const sb = `"${i.ifPrefix}*"`;
  const ports = [...new Set(i.servicePorts)].sort((a, b) => a - b);
  const moatAddresses = [i.subnet, ...(i.serviceInSubnet ? [] : [i.serviceAddress])].join(', ');
  return `table inet ${i.table} {}
delete table inet ${i.table}
table inet ${i.table} {
	chain prerouting {
		type filter hook prerouting priority filter - 10; policy accept;
		iifname ${sb} jump from_sandbox
	}

	chain from_sandbox {
		meta nfproto != ipv4 drop
		# Spoofed sources are dropped silently: a rejection would go to the forged address.
		fib saddr . iif oif missing drop
		# Not for this host: rejected here, before the kernel could route it or drop it silently.
		fib daddr type != local reject with icmpx admin-prohibited
	}

	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname ${sb} jump sandbox_to_host
		# Moat's addresses serve sandboxes and the host itself, not the network.
		iifname != "lo" ip daddr { ${moatAddresses} } drop
	}

	chain sandbox_to_host {
		ct state established,related accept
${ports.length ? `		ip daddr ${i.serviceAddress} tcp dport { ${ports.join(', ')} } accept\n` : ''}		meta l4proto tcp reject with tcp reset
		reject with icmpx admin-prohibited
	}

	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname ${sb} drop
		oifname ${sb} drop
	}

	chain output {
		type filter hook output priority filter - 10; policy accept;
		oifname ${sb} ct state established,related accept
		oifname ${sb} drop
	}
}
`;
}
