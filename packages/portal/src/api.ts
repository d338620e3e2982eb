/** The portal's client of the Moat API: same origin, the session cookie, and the CSRF token on every change. */
import {
  CONDITION,
  EXTENSIONS_API_VERSION,
  MOAT_API_VERSION,
  SANDBOX_API_VERSION,
  type Condition,
  type ObjectMeta as WireMeta,
  type SandboxSpec,
  type SandboxStatus,
} from '@moat/sdk/wire';

export { EXTENSIONS_API_VERSION, LABELS } from '@moat/sdk/wire';

export const SANDBOX_API = `/apis/${SANDBOX_API_VERSION}`;
export const EXT_API = `/apis/${EXTENSIONS_API_VERSION}`;
export const MOAT_API = `/apis/${MOAT_API_VERSION}`;

export interface Me {
  user: string;
  role: 'admin' | 'member' | 'viewer';
  agent?: string;
  keyId: string;
  namespace?: string;
  namespaces: string[];
  csrfToken?: string;
  expiresAt?: string;
}

/** Metadata as served: name and namespace always set. */
export type ObjectMeta = WireMeta & { name: string; namespace: string };

export interface Sandbox {
  metadata: ObjectMeta;
  spec: SandboxSpec;
  status: SandboxStatus;
}

export type Usage = NonNullable<SandboxStatus['resourceUsage']>;

export interface KObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec?: Record<string, unknown>;
  status?: { conditions?: Condition[]; replicas?: number; readyReplicas?: number } & Record<string, unknown>;
}

/** A refused or failed call: the server's Status (code, reason, message), word for word, as the SDK's MoatError. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

let csrfToken: string | undefined;
let onSignedOut: (() => void) | undefined;

export const setCsrf = (t: string | undefined) => (csrfToken = t);
export const whenSignedOut = (f: () => void) => (onSignedOut = f);

async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const s = JSON.parse(text) as { message?: string; reason?: string };
    return new ApiError(res.status, s.reason ?? res.statusText, s.message ?? (text || res.statusText));
  } catch {
    return new ApiError(res.status, res.statusText, text || `${res.status} ${res.statusText}`);
  }
}

export async function request(path: string, init: RequestInit & { json?: unknown } = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const method = (init.method ?? 'GET').toUpperCase();
  if (method !== 'GET' && method !== 'HEAD') headers.set('x-moat-csrf', csrfToken ?? '-');
  let body = init.body;
  if (init.json !== undefined) {
    headers.set('content-type', 'application/json');
    body = JSON.stringify(init.json);
  }
  const res = await fetch(path, { ...init, method, headers, body, credentials: 'same-origin' });
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401 && !path.endsWith('/session')) onSignedOut?.();
    throw err;
  }
  return res;
}

export async function api<T>(path: string, init: RequestInit & { json?: unknown } = {}): Promise<T> {
  const res = await request(path, init);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const session = {
  async current(): Promise<Me | undefined> {
    try {
      const me = await api<Me>(`${MOAT_API}/session`);
      setCsrf(me.csrfToken);
      return me;
    } catch (err) {
      if (err instanceof ApiError && err.code === 401) return undefined;
      throw err;
    }
  },
  async signIn(apiKey: string): Promise<Me> {
    const me = await api<Me>(`${MOAT_API}/session`, { method: 'POST', json: { apiKey } });
    setCsrf(me.csrfToken);
    return me;
  },
  async signOut(): Promise<void> {
    await api(`${MOAT_API}/session`, { method: 'DELETE' }).catch(() => {});
    setCsrf(undefined);
  },
};

export const sandboxPath = (ns: string, name?: string) =>
  `${SANDBOX_API}/namespaces/${encodeURIComponent(ns)}/sandboxes${name ? `/${encodeURIComponent(name)}` : ''}`;
export const objectPath = (plural: string, ns: string, name?: string) =>
  `${EXT_API}/namespaces/${encodeURIComponent(ns)}/${plural}${name ? `/${encodeURIComponent(name)}` : ''}`;

export function condition(o: { status?: { conditions?: Condition[] } }, type: string = CONDITION.Ready): Condition | undefined {
  return o.status?.conditions?.find((c) => c.type === type);
}

export function bytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
