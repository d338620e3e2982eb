import http, { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { canonicalHost, decideEgress, isIpLiteral, type EgressDecision } from '@moat/core';
import { normalizeAddress, resolveDestination, systemLookup } from './addresses.js';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { hostPort, parseAbsoluteTarget, parseConnectTarget, type Target } from './target.js';
import { Meter, TokenBucket } from './throttle.js';
import { DEFAULT_EGRESS_LIMITS, type EgressLimits, type EgressProxyOptions, type EgressRecord, type EgressSandbox } from './types.js';

/** Concurrency and bandwidth of one sandbox, shared by all its connections. */
class SandboxUsage {
  active = 0;
  up: TokenBucket | undefined;
  down: TokenBucket | undefined;

  constructor(public limits: EgressLimits) {
    this.apply(limits);
  }

  apply(limits: EgressLimits): void {
    this.limits = limits;
    this.up = bucket(this.up, limits.upBytesPerSecond);
    this.down = bucket(this.down, limits.downBytesPerSecond);
  }

  idle(): boolean {
    return this.active === 0 && (this.up?.full() ?? true) && (this.down?.full() ?? true);
  }
}

function bucket(b: TokenBucket | undefined, rate: number): TokenBucket | undefined {
  if (!rate) return undefined;
  if (!b) return new TokenBucket(rate);
  b.setRate(rate);
  return b;
}

/** Printable ASCII only: header values must not carry anything else. */
const headerSafe = (s: string) => s.replace(/[^\x20-\x7e]/g, '?').slice(0, 512);

interface Pending {
  started: number;
  record: EgressRecord;
}

/**
 * The egress proxy: the one way out of a sandbox. An HTTP forward proxy for
 * plain HTTP (absolute-form requests, bodies streamed both ways, client
 * keep-alive) and CONNECT tunnels for everything else (TLS passes through
 * untouched). Each connection is attributed to a sandbox by its source
 * address via `identify`, checked against the sandbox's egress policy
 * (decideEgress), resolved once to a public address (or a pinned one), and
 * paced by the sandbox's limits. Every decision becomes an EgressRecord.
 *
 * Denials are 403 with a plain-text body saying what was denied, for which
 * sandbox and why, and an `X-Moat-Egress-Denied` header with the reason;
 * too many connections are 429; upstream failures are 502.
 */
export class EgressProxy {
  private readonly server: http.Server;
  private readonly agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64, timeout: 30_000 });
  private readonly usage = new Map<string, SandboxUsage>();
  private readonly tunnels = new Set<Duplex>();
  private readonly pinned: Map<string, string>;
  private readonly lookup: (host: string) => Promise<string[]>;
  private readonly defaults: EgressLimits;
  private readonly connectTimeoutMs: number;
  private readonly sweeper: NodeJS.Timeout;
  private listening = { host: '', port: 0 };

  private constructor(private readonly opts: EgressProxyOptions) {
    this.pinned = new Map();
    for (const [name, address] of Object.entries(opts.pinnedHosts ?? {})) {
      const host = canonicalHost(name);
      if (!host || !isIP(address)) throw new Error(`pinned host ${name} → ${address}: expected a host name and an IP address`);
      this.pinned.set(host, address);
    }
    this.lookup = opts.lookup ?? systemLookup;
    this.defaults = { ...DEFAULT_EGRESS_LIMITS, ...opts.defaultLimits };
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    // Long uploads and downloads are normal through a proxy: no whole-request deadline.
    this.server = http.createServer({ requestTimeout: 0, headersTimeout: 30_000 });
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => void this.onRequest(req, res));
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.onConnect(req, socket, head));
    this.server.on('clientError', (_err, socket: Duplex) => socket.destroy());
    // Forget idle sandboxes once their buckets are full again, so forgetting changes nothing.
    this.sweeper = setInterval(() => {
      for (const [uid, u] of this.usage) if (u.idle()) this.usage.delete(uid);
    }, 30_000).unref();
  }

  static async start(opts: EgressProxyOptions): Promise<EgressProxy> {
    const p = new EgressProxy(opts);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        p.server.off('error', reject);
        const a = p.server.address() as { address: string; port: number };
        p.listening = { host: a.address, port: a.port };
        resolve();
      });
    });
    return p;
  }

  /** The address it listens on (still known after close). */
  get host(): string {
    return this.listening.host;
  }

  get port(): number {
    return this.listening.port;
  }

  /** What sandboxes put in HTTP_PROXY and HTTPS_PROXY. */
  get url(): string {
    return `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  /** Stops listening and ends every open request and tunnel. */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    for (const t of this.tunnels) t.destroy();
    this.agent.destroy();
    await closed;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const remote = normalizeAddress(req.socket.remoteAddress ?? '');
    const target = parseAbsoluteTarget(req.url ?? '');
    const method = req.method ?? 'GET';
    const p: Pending = { started, record: this.baseRecord(remote, method, target ?? { host: '', port: 0 }, target?.path) };
    const { sandbox, reason } = await this.whoIs(remote);
    if (!sandbox) return this.replyHttp(res, p, 403, `${method} ${req.url}`, reason);
    this.attribute(p, sandbox);
    const what = target ? `${method} http://${hostPort(target)}${target.path}` : `${method} ${req.url}`;
    if (!target) {
      const hint = /^https:/i.test(req.url ?? '') ? 'https:// goes through CONNECT (set HTTPS_PROXY)' : 'expected an absolute http:// URL, as sent to a proxy';
      return this.replyHttp(res, p, 400, what, hint, sandbox);
    }
    const decision = decideEgress(sandbox.policy, { host: target.host, port: target.port, method, path: target.path });
    this.decided(p, decision);
    if (!decision.allowed) return this.replyHttp(res, p, 403, what, decision.reason, sandbox);
    const usage = this.usageOf(sandbox);
    if (usage.active >= usage.limits.maxConnections) {
      return this.replyHttp(res, p, 429, what, `too many concurrent connections (limit ${usage.limits.maxConnections})`, sandbox);
    }
    usage.active++;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      usage.active--;
    };
    const dest = await resolveDestination(target.host, {
      pinned: this.pinned,
      lookup: this.lookup,
      explicitIpRule: this.explicitIpRule(sandbox, target, decision),
    });
    if (!dest.ok || req.socket.destroyed) {
      release();
      if (dest.ok) return this.gone(p);
      return this.replyHttp(res, p, dest.status, what, dest.reason, sandbox);
    }
    p.record.resolvedAddress = dest.address;

    const up = new Meter(usage.up);
    const down = new Meter(usage.down);
    const upstream = http.request({
      host: dest.address,
      port: target.port,
      method,
      path: target.path,
      headers: upstreamRequestHeaders(req.rawHeaders, hostPort(target).replace(/:80$/, '')),
      setHost: false,
      agent: this.agent,
    });
    this.connectDeadline(upstream);
    res.once('close', () => {
      // Also when the sandbox hangs up mid-way: stop the upstream side too.
      if (!res.writableFinished) upstream.destroy();
      release();
      p.record.bytesUp = up.bytes;
      p.record.bytesDown = down.bytes;
      p.record.status ??= res.statusCode;
      this.emit(p);
    });
    upstream.on('response', (ures) => {
      p.record.status = ures.statusCode;
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, downstreamResponseHeaders(ures.rawHeaders));
      ures.on('error', () => res.destroy());
      ures.pipe(down).pipe(res);
    });
    upstream.on('error', (err) => {
      if (res.headersSent) return void res.destroy();
      // The close handler above records it.
      this.replyHttp(
        res,
        p,
        502,
        what,
        `cannot reach ${hostPort(target)} (${dest.address}): ${(err as NodeJS.ErrnoException).code ?? err.message}`,
        sandbox,
        false,
      );
    });
    req.on('error', () => upstream.destroy());
    req.pipe(up).pipe(upstream);
  }

  private async onConnect(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const started = performance.now();
    socket.on('error', () => socket.destroy());
    // Sockets handed over by CONNECT are no longer the server's: close() ends them itself.
    this.tunnels.add(socket);
    socket.once('close', () => this.tunnels.delete(socket));
    const remote = normalizeAddress((socket as Socket).remoteAddress ?? '');
    const target = parseConnectTarget(req.url ?? '');
    const p: Pending = { started, record: this.baseRecord(remote, 'CONNECT', target ?? { host: '', port: 0 }) };
    const what = `CONNECT ${target ? hostPort(target) : req.url}`;
    const { sandbox, reason } = await this.whoIs(remote);
    if (!sandbox) return this.replyRaw(socket, p, 403, what, reason);
    this.attribute(p, sandbox);
    if (!target) return this.replyRaw(socket, p, 400, what, 'expected CONNECT host:port', sandbox);
    const decision = decideEgress(sandbox.policy, { host: target.host, port: target.port });
    this.decided(p, decision);
    if (!decision.allowed) return this.replyRaw(socket, p, 403, what, decision.reason, sandbox);
    const usage = this.usageOf(sandbox);
    if (usage.active >= usage.limits.maxConnections) {
      return this.replyRaw(socket, p, 429, what, `too many concurrent connections (limit ${usage.limits.maxConnections})`, sandbox);
    }
    usage.active++;
    const dest = await resolveDestination(target.host, {
      pinned: this.pinned,
      lookup: this.lookup,
      explicitIpRule: this.explicitIpRule(sandbox, target, decision),
    });
    if (!dest.ok || socket.destroyed) {
      usage.active--;
      if (dest.ok) return this.gone(p);
      return this.replyRaw(socket, p, dest.status, what, dest.reason, sandbox);
    }
    p.record.resolvedAddress = dest.address;

    const upstream = connect({ host: dest.address, port: target.port, allowHalfOpen: true });
    const up = new Meter(usage.up);
    const down = new Meter(usage.down);
    this.tunnels.add(upstream);
    const timer = setTimeout(() => upstream.destroy(new Error('connect timeout')), this.connectTimeoutMs);
    let established = false;
    let closed = 0;
    const onClose = () => {
      if (++closed < 2) return;
      this.tunnels.delete(upstream);
      usage.active--;
      p.record.bytesUp = up.bytes;
      p.record.bytesDown = down.bytes;
      if (established) this.emit(p);
    };
    // A failure on either side ends the tunnel. A clean end only half-closes it, through the pipes, once
    // the meters have passed on what they hold: the other side then ends too.
    socket.once('close', (hadError: boolean) => {
      if (hadError || !established) upstream.destroy();
      onClose();
    });
    upstream.once('close', (hadError) => {
      if (hadError && established) socket.destroy();
      onClose();
    });
    upstream.once('connect', () => {
      clearTimeout(timer);
      established = true;
      p.record.status = 200;
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      socket.pipe(up).pipe(upstream);
      upstream.pipe(down).pipe(socket);
    });
    upstream.on('error', (err) => {
      clearTimeout(timer);
      if (established) return void socket.destroy();
      this.replyRaw(socket, p, 502, what, `cannot reach ${hostPort(target)} (${dest.address}): ${(err as NodeJS.ErrnoException).code ?? err.message}`, sandbox);
    });
  }

  private async whoIs(remote: string): Promise<{ sandbox?: EgressSandbox; reason: string }> {
    try {
      const sandbox = await this.opts.identify(remote);
      return sandbox ? { sandbox, reason: '' } : { reason: `${remote} is not a Moat sandbox` };
    } catch (err) {
      return { reason: `cannot tell which sandbox ${remote} is: ${(err as Error).message}` };
    }
  }

  /** The sandbox hung up while its request was being checked. */
  private gone(p: Pending): void {
    p.record.reason = 'the client went away';
    this.emit(p);
  }

  /** Private destinations are reachable by IP literal only when an allow rule names exactly that IP. */
  private explicitIpRule(sandbox: EgressSandbox, target: Target, decision: EgressDecision): boolean {
    const rule = decision.ruleIndex === undefined ? undefined : sandbox.policy.rules?.[decision.ruleIndex];
    return !!rule && rule.action === 'allow' && isIpLiteral(target.host) && canonicalHost(rule.host) === target.host;
  }

  private usageOf(sandbox: EgressSandbox): SandboxUsage {
    const limits = { ...this.defaults, ...sandbox.limits };
    let u = this.usage.get(sandbox.uid);
    if (!u) this.usage.set(sandbox.uid, (u = new SandboxUsage(limits)));
    else u.apply(limits);
    return u;
  }

  private connectDeadline(req: http.ClientRequest): void {
    req.once('socket', (s: Socket) => {
      if (!s.connecting) return;
      const timer = setTimeout(() => req.destroy(new Error('connect timeout')), this.connectTimeoutMs);
      s.once('connect', () => clearTimeout(timer));
      s.once('close', () => clearTimeout(timer));
    });
  }

  private baseRecord(remote: string, method: string, t: Target, path?: string): EgressRecord {
    return {
      time: new Date().toISOString(),
      remoteAddress: remote,
      method,
      host: t.host,
      port: t.port,
      ...(path !== undefined ? { path } : {}),
      allowed: false,
      reason: '',
      bytesUp: 0,
      bytesDown: 0,
      durationMs: 0,
    };
  }

  private attribute(p: Pending, s: EgressSandbox): void {
    p.record.sandbox = { uid: s.uid, name: s.name, namespace: s.namespace };
    if (s.owner !== undefined) p.record.owner = s.owner;
  }

  private decided(p: Pending, d: EgressDecision): void {
    p.record.allowed = d.allowed;
    p.record.reason = d.reason;
    if (d.rule !== undefined) p.record.rule = d.rule;
  }

  /** Records the refusal and builds the response: a plain-text line an agent can act on. */
  private refusal(p: Pending, status: number, what: string, reason: string, sandbox?: EgressSandbox) {
    p.record.status = status;
    p.record.reason = reason;
    // A 502 was allowed and then failed upstream; everything else was refused here.
    if (status !== 502) p.record.allowed = false;
    const verb = status === 403 ? 'denied' : status === 429 ? 'refused' : 'failed';
    const who = sandbox ? ` for sandbox "${sandbox.namespace}/${sandbox.name}"` : '';
    const body = `Moat egress proxy: ${what} ${verb}${who}: ${reason}\n`;
    const headers: Record<string, string> = { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)) };
    if (status === 403 || status === 429) headers['X-Moat-Egress-Denied'] = headerSafe(reason);
    return { headers, body };
  }

  /** emitNow: false when the request's close handler records it. */
  private replyHttp(res: ServerResponse, p: Pending, status: number, what: string, reason: string, sandbox?: EgressSandbox, emitNow = true): void {
    const { headers, body } = this.refusal(p, status, what, reason, sandbox);
    res.writeHead(status, headers);
    res.end(body);
    if (emitNow) this.emit(p);
  }

  private replyRaw(socket: Duplex, p: Pending, status: number, what: string, reason: string, sandbox?: EgressSandbox): void {
    const { headers, body } = this.refusal(p, status, what, reason, sandbox);
    headers.Connection = 'close';
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('')}\r\n${body}`,
    );
    // The client should hang up now; one that does not is not left holding a socket.
    setTimeout(() => socket.destroy(), 5000).unref();
    this.emit(p);
  }

  private emit(p: Pending): void {
    p.record.durationMs = Math.round((performance.now() - p.started) * 10) / 10;
    try {
      this.opts.onDecision?.(p.record);
    } catch {
      // A failing consumer must not take the proxy down.
    }
  }
}
