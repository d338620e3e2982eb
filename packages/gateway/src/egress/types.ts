import type { EgressPolicy } from '@moat/core';

export interface EgressLimits {
  /** Tunnels and in-flight plain-HTTP requests at once; more are refused with 429. */
  maxConnections: number;
  /** Sandbox → destination, bytes per second over all its connections; 0: unlimited. */
  upBytesPerSecond: number;
  /** Destination → sandbox, bytes per second over all its connections; 0: unlimited. */
  downBytesPerSecond: number;
}

export const DEFAULT_EGRESS_LIMITS: EgressLimits = {
  maxConnections: 256,
  upBytesPerSecond: 32 * 2 ** 20,
  downBytesPerSecond: 128 * 2 ** 20,
};

/** What `identify` returns for a sandbox's source address. */
export interface EgressSandbox {
  uid: string;
  name: string;
  namespace: string;
  owner?: string;
  policy: EgressPolicy;
  /** Over the proxy's default limits. */
  limits?: Partial<EgressLimits>;
}

/** One per plain-HTTP request or CONNECT tunnel, when it ends; denials at once. */
export interface EgressRecord {
  /** When the request arrived (ISO 8601). */
  time: string;
  remoteAddress: string;
  /** Absent when the source is not a sandbox. */
  sandbox?: { uid: string; name: string; namespace: string };
  owner?: string;
  /** CONNECT or the HTTP method. */
  method: string;
  host: string;
  port: number;
  /** Plain HTTP only. */
  path?: string;
  resolvedAddress?: string;
  allowed: boolean;
  /** The policy rule that decided, if one did. */
  rule?: string;
  reason: string;
  /** Body bytes for plain HTTP, everything after the handshake for tunnels. */
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  /** The status the proxy answered with (200 for an established tunnel). */
  status?: number;
}

export interface EgressProxyOptions {
  /** Listening address; default 127.0.0.1. In production: the sandboxes' service address. */
  host?: string;
  /** Default 0: any free port (see EgressProxy.port). */
  port?: number;
  /** The sandbox behind a source address; undefined for anything else (refused with 403). */
  identify(remoteAddress: string): EgressSandbox | undefined | Promise<EgressSandbox | undefined>;
  onDecision?(record: EgressRecord): void;
  /** Name resolution; default the system resolver (all addresses). Injectable for tests. */
  lookup?(host: string): Promise<string[]>;
  /**
   * Trusted, operator-set name → address map consulted before DNS, like
   * /etc/hosts for the proxy. A pinned name may map to any address,
   * private and loopback included: only operators may set it, never sandboxes.
   */
  pinnedHosts?: Record<string, string>;
  defaultLimits?: Partial<EgressLimits>;
  /** Give up connecting upstream after this long (502). Default 10 s. */
  connectTimeoutMs?: number;
}
