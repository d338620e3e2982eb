import { canonicalHost } from '@moat/core';

export interface Target {
  /** Canonical (see canonicalHost): lower-case, IPv6 without brackets. */
  host: string;
  port: number;
}

/** `CONNECT host:port`: exactly an authority, port required. */
export function parseConnectTarget(authority: string): Target | undefined {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^\s/?#@[\]:]+):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[2]);
  const host = canonicalHost(m[1]!);
  return host && port >= 1 && port <= 65535 ? { host, port } : undefined;
}

/**
 * The absolute-form URL of a plain-HTTP proxy request. The path comes back
 * with dot segments resolved, so what is forwarded is what the policy saw.
 */
export function parseAbsoluteTarget(url: string): (Target & { path: string }) | undefined {
  if (!/^http:\/\//i.test(url)) return undefined;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (u.username || u.password) return undefined;
  const host = canonicalHost(u.hostname);
  return host ? { host, port: u.port ? Number(u.port) : 80, path: `${u.pathname}${u.search}` } : undefined;
}

/** host:port as written in a URL. */
export const hostPort = (t: Target) => `${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`;
