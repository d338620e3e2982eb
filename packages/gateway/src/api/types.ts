/** Where a call goes, with what the gateway adds: the tenant's credentials stay on this side. */
export interface Upstream {
  /** e.g. https://api.openai.com; the request path is appended. */
  baseUrl: string;
  /** Set on the upstream request (credentials, e.g. authorization or x-api-key). */
  headers: Record<string, string>;
  /** Values that must never reach the sandbox: scrubbed from answers, headers and errors. */
  secrets: string[];
  /** LLM upstreams: the tenant's model allow-list, which also filters what `/v1/models` lists. */
  allowModel?: (model: string) => boolean;
}

export type LlmApi = 'openai' | 'anthropic';

/** One call through the gateway, when it ends. */
export interface GatewayCall {
  /** `POST /v1/chat/completions`, `proxy github GET /user`, ... */
  route: string;
  api?: LlmApi;
  model?: string;
  /** What the gateway answered (upstream's status, or its own refusal). */
  status: number;
  /** Why the gateway refused or failed; absent when the upstream answered. */
  error?: string;
  inputTokens: number;
  outputTokens: number;
  durationMs: number;
}

export interface ApiGatewayOptions<Caller> {
  /** Default 127.0.0.1; in production the sandboxes' service address. */
  host?: string;
  port?: number;
  /** The caller behind a source address and the token it presented; throws GatewayError when it is not one. */
  identify(remoteAddress: string, token: string | undefined): Promise<Caller>;
  /** The provider for an LLM call; throws GatewayError for a model not allowed, a budget spent, no provider. */
  llm(caller: Caller, api: LlmApi, model: string | undefined): Promise<Upstream>;
  /** The upstream of a credential-injection rule (`/proxy/<name>/...`). */
  credential(caller: Caller, name: string): Promise<Upstream>;
  /** Every call, refused ones too (the caller is undefined when it could not be identified). */
  done(caller: Caller | undefined, call: GatewayCall, remoteAddress: string): void;
  /** Operator-trusted name → address pins (like the egress proxy's); other names must resolve to public addresses. */
  pinnedHosts?: Record<string, string>;
  lookup?(host: string): Promise<string[]>;
}

/** A refusal with the status and message the sandbox gets. */
export class GatewayError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}
