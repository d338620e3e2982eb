// RFC 9110 §7.6.1 connection-specific fields, plus what this proxy answers itself (Host is rewritten, 100-continue is Node's).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const REQUEST_ONLY = new Set(['host', 'expect']);

function filter(raw: string[], also: Set<string>): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') for (const t of raw[i + 1]!.split(',')) named.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(k) || named.has(k) || also.has(k) || k.startsWith('proxy-')) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** Request headers to send upstream, as raw pairs: end-to-end ones only, and Host set to the URL's authority. */
export function upstreamRequestHeaders(raw: string[], host: string): string[] {
  return ['Host', host, ...filter(raw, REQUEST_ONLY)];
}

/** Response headers to send back to the sandbox, as raw pairs. */
export function downstreamResponseHeaders(raw: string[]): string[] {
  return filter(raw, new Set());
}
