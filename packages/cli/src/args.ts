import { CliError } from './errors.js';

/** Commander reducer for repeatable options (`-e A=1 -e B=2`). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** `K=V` pairs into an object; the value may contain `=`. */
export function parseKeyValues(pairs: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CliError(`invalid ${what} "${pair}": expected KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/** Seconds from "90", "90s", "1m30s", "2h" or "500ms" (rounded up to whole seconds). */
export function parseDuration(text: string, what = 'duration'): number {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.ceil(Number(s));
  const parts = [...s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)];
  if (!parts.length || parts.map((p) => p[0]).join('') !== s) {
    throw new CliError(`invalid ${what} "${text}": expected seconds or a duration like 30s, 2m, 1h, 7d`);
  }
  return Math.ceil(parts.reduce((sum, p) => sum + Number(p[1]) * UNIT_SECONDS[p[2]], 0));
}

export function parseIntArg(text: string, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < min || n > max) throw new CliError(`invalid ${what} "${text}": expected an integer from ${min} to ${max}`);
  return n;
}

export interface RemotePath {
  sandbox: string;
  path: string;
}

const SANDBOX_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * `NAME:/path` → remote; anything else → null (a local path). A DNS-1123 name
 * followed by a colon and a relative path is an error rather than a guess: it
 * is almost always a forgotten slash.
 */
export function parseRemotePath(arg: string): RemotePath | null {
  const colon = arg.indexOf(':');
  if (colon <= 0) return null;
  const sandbox = arg.slice(0, colon);
  const path = arg.slice(colon + 1);
  if (!SANDBOX_NAME.test(sandbox) || sandbox.length > 63) return null;
  if (!path.startsWith('/')) {
    throw new CliError(`"${arg}": the path in a sandbox must be absolute (${sandbox}:/${path}); for a local file whose name contains ":" write ./${arg}`);
  }
  return { sandbox, path };
}

/** `sandbox/NAME` or (`sandbox`, `NAME`) → [type, name]. */
export function parseResourceRef(args: string[]): [string, string] {
  if (args.length === 1 && args[0].includes('/')) {
    const [type, name] = [args[0].slice(0, args[0].indexOf('/')), args[0].slice(args[0].indexOf('/') + 1)];
    if (type && name) return [type, name];
  }
  if (args.length === 2 && args[0] && args[1]) return [args[0], args[1]];
  throw new CliError(`expected TYPE/NAME (for example sandbox/my-sbx), got "${args.join(' ')}"`);
}
