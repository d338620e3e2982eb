import type { HttpClient } from './http.js';
import { MOAT_API_VERSION } from './types.js';

export interface GatewayProvider {
  baseUrl: string;
  /** The secret holding the provider's API key. */
  secret: string;
}

/** A namespace's API gateway settings (docs/gateway.md). */
export interface GatewayConfig {
  openai?: GatewayProvider;
  anthropic?: GatewayProvider;
  models?: string[];
  budgets?: { requestsPerDay?: number; tokensPerDay?: number };
  credentials?: { name: string; baseUrl: string; headers: Record<string, string> }[];
}

export interface GatewayUsage {
  day: string;
  namespace: string;
  sandbox: string;
  model: string;
  user: string;
  agent: string;
  requests: number;
  inputTokens: number;
  outputTokens: number;
}

/** The gateway settings and LLM usage of this client's namespace. */
export class GatewayApi {
  constructor(
    private readonly http: HttpClient,
    private readonly namespace: string,
  ) {}

  private get base() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${encodeURIComponent(this.namespace)}/gateway`;
  }

  get(): Promise<GatewayConfig> {
    return this.http.json('GET', this.base);
  }

  set(config: GatewayConfig): Promise<GatewayConfig> {
    return this.http.json('PUT', this.base, { json: config });
  }

  async delete(): Promise<void> {
    await this.http.request('DELETE', this.base);
  }

  /** One UTC day (default today), per sandbox and model. */
  async usage(opts: { day?: string } = {}): Promise<GatewayUsage[]> {
    return (await this.http.json<{ items: GatewayUsage[] }>('GET', `${this.base}/usage`, { query: { day: opts.day } })).items;
  }
}
