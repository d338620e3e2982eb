import { errorFromResponse, isAbortTimeout, networkError, timeoutError } from './errors.js';

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  query?: Query;
  /** Sent as application/json. */
  json?: unknown;
  /** Sent as is (application/octet-stream unless contentType says otherwise); a stream is sent as it is read. */
  body?: Uint8Array | string | ReadableStream<Uint8Array>;
  contentType?: string;
  /** Milliseconds for the whole exchange, body included; null = no limit; undefined = the client's default. */
  timeoutMs?: number | null;
}

/** The one place that talks HTTP: auth, URLs, timeouts and error mapping. */
export class HttpClient {
  constructor(
    readonly baseUrl: string,
    private readonly apiKey: string | undefined,
    private readonly fetchImpl: typeof fetch,
    readonly defaultTimeoutMs: number,
  ) {}

  url(path: string, query?: Query): string {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) qs.set(k, String(v));
    const s = qs.toString();
    return `${this.baseUrl}${path}${s ? `?${s}` : ''}`;
  }

  /** ws:// or wss:// URL of the same server. */
  wsUrl(path: string, query?: Query): string {
    return this.url(path, query).replace(/^http/, 'ws');
  }

  authHeaders(): Record<string, string> {
    return this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {};
  }

  /** Returns the response once its status is 2xx; anything else becomes a MoatError. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = this.url(path, opts.query);
    const what = `${method} ${path}`;
    const timeoutMs = opts.timeoutMs === undefined ? this.defaultTimeoutMs : opts.timeoutMs;
    const headers: Record<string, string> = { ...this.authHeaders() };
    let body: RequestOptions['body'];
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      headers['content-type'] = opts.contentType ?? 'application/octet-stream';
      body = opts.body;
    }
    const streaming = typeof body === 'object' && !(body instanceof Uint8Array);
    let res: Response;
    try {
      res = await this.fetchImpl(url, {
        method,
        headers,
        // Node's fetch accepts any Uint8Array; the lib types are narrower (ArrayBuffer-backed only).
        body: body as RequestInit['body'],
        // A stream body needs half duplex in Node's fetch.
        ...(streaming ? { duplex: 'half' } : {}),
        signal: timeoutMs === null ? undefined : AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      if (isAbortTimeout(err)) throw timeoutError(what, timeoutMs ?? 0);
      throw networkError(this.baseUrl, err);
    }
    if (!res.ok) {
      const text = await this.readBody(res, what, timeoutMs, (r) => r.text()).catch(() => '');
      throw errorFromResponse(res.status, text, what);
    }
    return res;
  }

  async json<T>(method: string, path: string, opts?: RequestOptions): Promise<T> {
    const res = await this.request(method, path, opts);
    const text = await this.readBody(res, `${method} ${path}`, opts?.timeoutMs, (r) => r.text());
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async buffer(method: string, path: string, opts?: RequestOptions): Promise<Buffer> {
    const res = await this.request(method, path, opts);
    const ab = await this.readBody(res, `${method} ${path}`, opts?.timeoutMs, (r) => r.arrayBuffer());
    return Buffer.from(ab);
  }

  async text(method: string, path: string, opts?: RequestOptions): Promise<string> {
    const res = await this.request(method, path, opts);
    return this.readBody(res, `${method} ${path}`, opts?.timeoutMs, (r) => r.text());
  }

  // The abort signal keeps running while the body streams in, so a slow body
  // surfaces here as an AbortError that deserves the same translation.
  private async readBody<T>(res: Response, what: string, timeoutMs: number | null | undefined, read: (r: Response) => Promise<T>): Promise<T> {
    try {
      return await read(res);
    } catch (err) {
      if (isAbortTimeout(err)) throw timeoutError(what, timeoutMs ?? this.defaultTimeoutMs);
      throw networkError(this.baseUrl, err);
    }
  }
}
