import { Type, type Static } from '@sinclair/typebox';
import { invalid } from './errors.js';

/**
 * A sandbox's egress policy: where its code may connect through Moat's egress
 * proxy (the only way out of a sandbox's network namespace).
 *
 * Modes:
 * - `deny-all` (the default): nothing is allowed; rules are ignored, so
 *   switching a sandbox to deny-all never needs its rules edited away.
 * - `allow-list`: allowed when an allow rule matches and no deny rule does.
 * - `allow-all-public`: allowed unless a deny rule matches.
 * Deny rules win over allow rules whatever their order; among rules of the
 * same action the first match is the one reported.
 *
 * Hosts: an exact name (`api.example.com`), `*.example.com` (any subdomain,
 * not the apex), `*` (any host), or an IP literal. Matching is
 * case-insensitive and ignores one trailing dot; IDNs must be written in
 * their `xn--` form. The proxy additionally refuses private, loopback,
 * link-local and other non-public addresses in every mode, unless the client
 * asked for an IP literal that an allow rule names exactly.
 *
 * `methods` and `paths` are only visible on plain HTTP. An allow rule that has
 * them never matches a CONNECT tunnel; a deny rule that has them matches every
 * tunnel to its host and ports, because what it forbids could be inside.
 * Paths are prefixes matched per segment (`/api` matches `/api` and `/api/x`,
 * not `/apix`), case-sensitively, after dot segments are resolved.
 */
export const EGRESS_MODES = ['deny-all', 'allow-list', 'allow-all-public'] as const;
export type EgressMode = (typeof EGRESS_MODES)[number];

const Strict = { additionalProperties: false } as const;
const LABEL = '[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?';
/** Shape only; `validateEgressPolicy` also checks that IP literals are real addresses. */
export const EGRESS_HOST_PATTERN = `^(\\*|(\\*\\.)?${LABEL}(\\.${LABEL})*\\.?|\\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\\]?)$`;

export const EgressRuleSchema = Type.Object(
  {
    action: Type.Union([Type.Literal('allow'), Type.Literal('deny')]),
    host: Type.String({ minLength: 1, maxLength: 255, pattern: EGRESS_HOST_PATTERN }),
    /** Default: any port. */
    ports: Type.Optional(Type.Array(Type.Integer({ minimum: 1, maximum: 65535 }), { minItems: 1, maxItems: 64 })),
    /** Plain HTTP only. */
    methods: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 32, pattern: '^[A-Za-z][A-Za-z-]*$' }), { minItems: 1, maxItems: 16 })),
    /** Path prefixes; plain HTTP only. */
    paths: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 2048, pattern: '^/' }), { minItems: 1, maxItems: 64 })),
  },
  Strict,
);
export type EgressRule = Static<typeof EgressRuleSchema>;

export const EgressPolicySchema = Type.Object(
  {
    mode: Type.Optional(
      Type.Union(
        EGRESS_MODES.map((m) => Type.Literal(m)),
        { default: 'deny-all' },
      ),
    ),
    rules: Type.Optional(Type.Array(EgressRuleSchema, { maxItems: 256 })),
  },
  Strict,
);
export type EgressPolicy = Static<typeof EgressPolicySchema>;

/** A sandbox's limits at the egress proxy; unset fields take the server's defaults, 0 means unlimited. */
export const EgressLimitsSchema = Type.Object(
  {
    maxConnections: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
    upBytesPerSecond: Type.Optional(Type.Integer({ minimum: 0 })),
    downBytesPerSecond: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  Strict,
);

export interface EgressRequest {
  host: string;
  port: number;
  /** Absent for CONNECT tunnels. */
  method?: string;
  /** Absent for CONNECT tunnels; a query string is ignored. */
  path?: string;
}

export interface EgressDecision {
  allowed: boolean;
  /** The rule that decided, as text (e.g. `rules[2] "deny *.example.com ports 443"`). */
  rule?: string;
  ruleIndex?: number;
  reason: string;
}

/**
 * The canonical form of a host name or IP literal as matched by policies:
 * lower-case, no trailing dot, IPv6 without brackets, IPv4-mapped IPv6 and
 * numeric IPv4 spellings (`0x7f.1`, `2130706433`) as dotted IPv4. Undefined
 * when it is not a host (ports, user info, paths and bad IP literals are not).
 */
export function canonicalHost(host: string): string | undefined {
  let h = host.toLowerCase();
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.length === 0 || h.length > 253 || !/^[a-z0-9._\-:[\]]+$/.test(h)) return undefined;
  const bracketed = h.startsWith('[') && h.endsWith(']');
  if (h.includes(':') && !bracketed) h = `[${h}]`;
  else if (!h.includes(':') && (h.includes('[') || h.includes(']'))) return undefined;
  let out: string;
  try {
    out = new URL(`http://${h}/`).hostname;
  } catch {
    return undefined;
  }
  if (out.startsWith('[')) {
    out = out.slice(1, -1);
    const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(out);
    if (mapped) {
      const hi = parseInt(mapped[1]!, 16);
      const lo = parseInt(mapped[2]!, 16);
      out = [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
    }
  }
  return out;
}

export function isIpLiteral(canonical: string): boolean {
  return canonical.includes(':') || /^\d+\.\d+\.\d+\.\d+$/.test(canonical);
}

/** Resolves dot segments so `/public/../admin` is matched as `/admin` (the proxy forwards the resolved path). */
export function normalizeRequestPath(path: string): string {
  try {
    return new URL(path.startsWith('/') ? path : `/${path}`, 'http://moat.invalid').pathname;
  } catch {
    return path;
  }
}

export function describeRule(rule: EgressRule, index: number): string {
  let s = `${rule.action} ${rule.host}`;
  if (rule.ports) s += ` ports ${rule.ports.join(',')}`;
  if (rule.methods) s += ` methods ${rule.methods.join(',')}`;
  if (rule.paths) s += ` paths ${rule.paths.join(',')}`;
  return `rules[${index}] "${s}"`;
}

function hostMatches(pattern: string, host: string): boolean {
  if (pattern === '*') return true;
  if (pattern.startsWith('*.')) {
    if (isIpLiteral(host)) return false;
    const suffix = canonicalHost(pattern.slice(2));
    return suffix !== undefined && host.endsWith(`.${suffix}`);
  }
  return canonicalHost(pattern) === host;
}

function pathMatches(prefix: string, path: string): boolean {
  const p = normalizeRequestPath(prefix);
  return path === p || path.startsWith(p.endsWith('/') ? p : `${p}/`);
}

/** Whether the rule applies; `opaque` when it constrains what a tunnel hides. */
function ruleMatches(rule: EgressRule, host: string, req: EgressRequest, path: string | undefined): 'yes' | 'no' | 'opaque' {
  if (!hostMatches(rule.host, host)) return 'no';
  if (rule.ports && !rule.ports.includes(req.port)) return 'no';
  if (!rule.methods && !rule.paths) return 'yes';
  if (req.method === undefined || path === undefined) return 'opaque';
  if (rule.methods && !rule.methods.some((m) => m.toUpperCase() === req.method!.toUpperCase())) return 'no';
  if (rule.paths && !rule.paths.some((p) => pathMatches(p, path))) return 'no';
  return 'yes';
}

/** Decides one request against a policy. Pure; address checks (private ranges, DNS) are the proxy's. */
export function decideEgress(policy: EgressPolicy | undefined, req: EgressRequest): EgressDecision {
  const mode = policy?.mode ?? 'deny-all';
  if (mode === 'deny-all') return { allowed: false, reason: 'policy deny-all: this sandbox may not reach the network' };
  const host = canonicalHost(req.host);
  if (host === undefined) return { allowed: false, reason: `"${req.host}" is not a valid host` };
  const path = req.path === undefined ? undefined : normalizeRequestPath(req.path.split('?')[0]!);
  const rules = policy?.rules ?? [];
  for (const [i, r] of rules.entries()) {
    if (r.action !== 'deny') continue;
    const m = ruleMatches(r, host, req, path);
    if (m === 'no') continue;
    const rule = describeRule(r, i);
    const why = m === 'opaque' ? ' (its methods/paths cannot be checked inside a CONNECT tunnel)' : '';
    return { allowed: false, rule, ruleIndex: i, reason: `denied by ${rule}${why}` };
  }
  for (const [i, r] of rules.entries()) {
    if (r.action === 'allow' && ruleMatches(r, host, req, path) === 'yes') {
      const rule = describeRule(r, i);
      return { allowed: true, rule, ruleIndex: i, reason: `allowed by ${rule}` };
    }
  }
  if (mode === 'allow-all-public') return { allowed: true, reason: 'policy allow-all-public' };
  const tunnelMissed = req.method === undefined && rules.some((r) => r.action === 'allow' && ruleMatches(r, host, req, path) === 'opaque');
  const hint = tunnelMissed ? ' (allow rules with methods/paths do not apply to CONNECT tunnels)' : '';
  return { allowed: false, reason: `no allow rule matches (policy allow-list)${hint}` };
}

/** Checks what the schema cannot (IP literals are real addresses) and fills the default mode. */
export function validateEgressPolicy(policy: EgressPolicy, field = 'egress'): EgressPolicy & { mode: EgressMode } {
  for (const [i, r] of (policy.rules ?? []).entries()) {
    const f = `${field}.rules[${i}].host`;
    const bare = r.host === '*' ? '*' : r.host.startsWith('*.') ? r.host.slice(2) : r.host;
    if (bare === '*') continue;
    const c = canonicalHost(bare);
    if (c === undefined) throw invalid(`${f}: "${r.host}" is not a valid host name or IP address`, { field: f });
    if (r.host.startsWith('*.') && isIpLiteral(c)) throw invalid(`${f}: a wildcard cannot apply to an IP address ("${r.host}")`, { field: f });
  }
  return { ...policy, mode: policy.mode ?? 'deny-all' };
}
