import type { HttpClient } from './http.js';
import { MOAT_API_VERSION } from './types.js';

export interface AuditEvent {
  seq: number;
  time: string;
  actor: { user?: string; agent?: string; keyId?: string; source: string };
  /** `POST sandboxes/{name}/exec`, `egress`, ... */
  action: string;
  namespace: string;
  sandbox: string;
  object: string;
  result: 'success' | 'denied' | 'failed';
  detail: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

export interface AuditFilter {
  since?: Date | string;
  until?: Date | string;
  user?: string;
  agent?: string;
  namespace?: string;
  sandbox?: string;
  action?: string;
}

export interface AuditVerifyReport {
  ok: boolean;
  events: number;
  checkpoints: number;
  brokenAt?: number;
  reason?: string;
}

const BASE = `/apis/${MOAT_API_VERSION}/audit`;
const iso = (d: Date | string | undefined) => (d === undefined ? undefined : new Date(d).toISOString());

export class AuditApi {
  constructor(private readonly http: HttpClient) {}

  /** Oldest first; page with `after` (the last `seq` seen). Non-admin keys see their namespaces' events and their own. */
  async list(filter: AuditFilter & { after?: number; limit?: number } = {}): Promise<AuditEvent[]> {
    return (await this.http.json<{ items: AuditEvent[] }>('GET', BASE, { query: { ...filter, since: iso(filter.since), until: iso(filter.until) } })).items;
  }

  /** Every matching event as JSON Lines. */
  export(filter: AuditFilter = {}): Promise<string> {
    return this.http.text('GET', `${BASE}/export`, { query: { ...filter, since: iso(filter.since), until: iso(filter.until) }, timeoutMs: null });
  }

  /** Admins only. */
  verify(): Promise<AuditVerifyReport> {
    return this.http.json('GET', `${BASE}/verify`, { timeoutMs: null });
  }
}
