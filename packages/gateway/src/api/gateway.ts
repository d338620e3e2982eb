import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { canonicalHost } from '@moat/core';
import { normalizeAddress, resolveDestination, systemLookup } from '../egress/addresses.js';
import { downstreamResponseHeaders, upstreamRequestHeaders } from '../egress/headers.js';
import { redactText, Redactor } from './redact.js';
import { GatewayError, type ApiGatewayOptions, type GatewayCall, type LlmApi, type Upstream } from './types.js';
import { UsageMeter } from './usage.js';

const OPENAI = /^\/v1\/(chat\/completions|responses|embeddings|models)(\/[^?]*)?$/;
const ANTHROPIC = /^\/v1\/messages(\/count_tokens)?$/;
const PROXY = /^\/proxy\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\/.*)?$/;
const MAX_LLM_BODY = 32 * 1024 * 1024;
/** The sandbox's own credentials (its token) never go upstream; cookies neither. */
const DROP_FROM_SANDBOX = new Set(['authorization', 'x-api-key', 'cookie', 'accept-encoding']);

function tokenOf(req: IncomingMessage): string | undefined {
  return req.headers.authorization?.match(/^Bearer\s+(\S+)$/i)?.[1] ?? (req.headers['x-api-key'] as string | undefined);
}

async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > max) throw new GatewayError(413, `request body is larger than ${max} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * The gateway sandboxes call for LLMs and other APIs, so that credentials
 * stay outside: OpenAI-compatible (`/v1/chat/completions`, `/v1/responses`,
 * `/v1/embeddings`, `/v1/models`) and Anthropic-compatible (`/v1/messages`)
 * endpoints, and `/proxy/<name>/...` for credential-injection rules. The
 * caller authenticates with its sandbox token; the gateway swaps in the
 * tenant's credential, streams the answer back as it comes (SSE included),
 * counts tokens, and scrubs the credential from anything it returns.
 */
export class ApiGateway<Caller> {
  private readonly server: http.Server;
  private readonly agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };
  private readonly pinned: Map<string, string>;
  private listening = { host: '', port: 0 };

  private constructor(private readonly opts: ApiGatewayOptions<Caller>) {
    this.pinned = new Map(Object.entries(opts.pinnedHosts ?? {}).map(([name, address]) => [canonicalHost(name) ?? name, address]));
    this.server = http.createServer({ requestTimeout: 0, headersTimeout: 30_000 }, (req, res) => void this.handle(req, res));
    this.server.on('clientError', (_err, socket) => socket.destroy());
  }

  static async start<C>(opts: ApiGatewayOptions<C>): Promise<ApiGateway<C>> {
    const g = new ApiGateway(opts);
    await new Promise<void>((resolve, reject) => {
      g.server.once('error', reject);
      g.server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        g.server.off('error', reject);
        const a = g.server.address() as { address: string; port: number };
        g.listening = { host: a.address, port: a.port };
        resolve();
      });
    });
    return g;
  }

  get url(): string {
    const { host, port } = this.listening;
    return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const remote = normalizeAddress(req.socket.remoteAddress ?? '');
    const path = (req.url ?? '/').split('?')[0]!;
    const call: GatewayCall = { route: `${req.method} ${path}`, status: 0, inputTokens: 0, outputTokens: 0, durationMs: 0 };
    let caller: Caller | undefined;
    let secrets: string[] = [];
    try {
      caller = await this.opts.identify(remote, tokenOf(req));
      const proxy = PROXY.exec(path);
      if (proxy) {
        const rest = proxy[3] ?? '/';
        call.route = `proxy ${proxy[1]} ${req.method} ${rest}`;
        const up = await this.opts.credential(caller, proxy[1]!);
        secrets = up.secrets;
        await this.forward(req, res, up, rest + query(req.url), undefined, call);
      } else {
        const api: LlmApi | undefined = OPENAI.test(path) ? 'openai' : ANTHROPIC.test(path) ? 'anthropic' : undefined;
        if (!api)
          throw new GatewayError(
            404,
            `no gateway route ${req.method} ${path}: use /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models, /v1/messages or /proxy/<name>/...`,
          );
        call.api = api;
        const body = req.method === 'POST' ? await readBody(req, MAX_LLM_BODY) : undefined;
        const request = body?.length ? parseLlmBody(body, path) : undefined;
        if (request?.model) call.model = request.model;
        // GET /v1/models/{id} names its model in the path.
        const listed = api === 'openai' ? /^\/v1\/models\/(.+)$/.exec(path)?.[1] : undefined;
        if (listed) call.model = decodeURIComponent(listed);
        const up = await this.opts.llm(caller, api, call.model);
        secrets = up.secrets;
        const models = path === '/v1/models' && up.allowModel ? up.allowModel : undefined;
        await this.forward(req, res, up, path + query(req.url), request ? Buffer.from(JSON.stringify(request.json)) : body, call, models);
      }
    } catch (err) {
      const status = err instanceof GatewayError ? err.status : 502;
      const message = redactText(err instanceof GatewayError ? err.message : `upstream failed: ${(err as Error).message}`, secrets);
      call.status = status;
      call.error = message;
      if (!res.headersSent) {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `Moat gateway: ${message}`, type: 'moat_gateway_error', code: status } }));
      } else res.destroy();
    } finally {
      call.durationMs = Math.round((performance.now() - started) * 10) / 10;
      this.opts.done(caller, call, remote);
    }
  }

  private async forward(
    req: IncomingMessage,
    res: ServerResponse,
    up: Upstream,
    path: string,
    body: Buffer | undefined,
    call: GatewayCall,
    allowModel?: (m: string) => boolean,
  ): Promise<void> {
    const base = new URL(up.baseUrl);
    const target = new URL(base.pathname.replace(/\/+$/, '') + path, base);
    const host = canonicalHost(target.hostname) ?? target.hostname;
    const dest = await resolveDestination(host, { pinned: this.pinned, lookup: this.opts.lookup ?? systemLookup, explicitIpRule: false });
    if (!dest.ok) throw new GatewayError(dest.status, `upstream ${host}: ${dest.reason}`);
    const lookup: LookupFunction = (_h, options, cb) =>
      (options as { all?: boolean }).all
        ? (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [
            { address: dest.address, family: dest.address.includes(':') ? 6 : 4 },
          ])
        : cb(null, dest.address, dest.address.includes(':') ? 6 : 4);

    const overridden = new Set(Object.keys(up.headers).map((k) => k.toLowerCase()));
    const headers = dropPairs(
      upstreamRequestHeaders(
        dropPairs(req.rawHeaders, (k) => DROP_FROM_SANDBOX.has(k)),
        target.host,
      ),
      (k) => overridden.has(k) || (!!body && k === 'content-length'),
    );
    for (const [k, v] of Object.entries(up.headers)) headers.push(k, v);
    // Plain bodies: the credential can be scrubbed from them.
    headers.push('accept-encoding', 'identity');
    if (body) headers.push('content-length', String(body.length));

    const client = target.protocol === 'https:' ? https : http;
    const upstream = client.request(target, {
      method: req.method,
      headers,
      lookup,
      agent: target.protocol === 'https:' ? this.agents.https : this.agents.http,
      timeout: 30_000,
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    const answer = new Promise<IncomingMessage>((resolve, reject) => {
      upstream.once('response', resolve);
      upstream.once('error', reject);
      upstream.once('timeout', () => upstream.destroy(new Error('no answer within 30 s')));
    });
    void answer.catch(() => {}); // sending may fail first; the same error then comes from there
    if (body) upstream.end(body);
    else await pipeline(req, upstream);
    const ures = await answer;
    upstream.setTimeout(0); // an answer may stream for as long as it takes
    call.status = ures.statusCode ?? 502;
    // Scrubbing may change the length: the answer goes chunked.
    const out = dropPairs(downstreamResponseHeaders(ures.rawHeaders), (k) => k === 'content-length').map((v, i) =>
      i % 2 === 1 ? redactText(v, up.secrets) : v,
    );
    if (allowModel && call.status === 200) {
      // A model list is small: read whole, it lists only what the tenant may use.
      const chunks: Buffer[] = [];
      for await (const c of ures) chunks.push(c as Buffer);
      res.writeHead(200, out);
      res.end(redactText(filterModelList(Buffer.concat(chunks).toString('utf8'), allowModel), up.secrets));
      return;
    }
    res.writeHead(call.status, out);
    res.flushHeaders();
    const meter = new UsageMeter(/text\/event-stream/.test(ures.headers['content-type'] ?? ''));
    await pipeline(ures, meter, new Redactor(up.secrets), res);
    call.inputTokens = meter.usage.inputTokens;
    call.outputTokens = meter.usage.outputTokens;
  }
}

const query = (url: string | undefined) => {
  const i = (url ?? '').indexOf('?');
  return i < 0 ? '' : url!.slice(i);
};

/** An OpenAI model list (`{data: [{id}...]}`) without the models the allow-list refuses; anything else as it came. */
function filterModelList(text: string, allowModel: (m: string) => boolean): string {
  try {
    const list = JSON.parse(text) as { data?: unknown };
    if (!Array.isArray(list.data)) return text;
    list.data = list.data.filter((m: unknown) => typeof (m as { id?: unknown })?.id === 'string' && allowModel((m as { id: string }).id));
    return JSON.stringify(list);
  } catch {
    return text;
  }
}

/** Raw header pairs without the names `drop` picks (given lower-case). */
function dropPairs(raw: string[], drop: (name: string) => boolean): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (!drop(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

/**
 * The model of an LLM request. OpenAI streams report usage only when asked,
 * so a streamed chat completion is asked to (budgets count tokens).
 */
function parseLlmBody(body: Buffer, path: string): { model?: string; json: Record<string, unknown> } {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new GatewayError(400, `the request body is not JSON: ${(err as Error).message}`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new GatewayError(400, 'the request body must be a JSON object');
  const o = json as Record<string, unknown>;
  if (path === '/v1/chat/completions' && o.stream === true && !('stream_options' in o)) o.stream_options = { include_usage: true };
  return { ...(typeof o.model === 'string' ? { model: o.model } : {}), json: o };
}
