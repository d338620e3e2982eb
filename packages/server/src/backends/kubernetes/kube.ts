import { request as httpRequest, Agent as HttpAgent, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent, type RequestOptions } from 'node:https';
import { KubeConfig, Watch } from '@kubernetes/client-node';
import { MoatError } from '@moat/core';

/** Connection failures that mean the request never reached the apiserver. */
const NOT_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/**
 * The Kubernetes API as the backend uses it: JSON over one keep-alive connection pool, with the kubeconfig's (or
 * the pod's service account's) credentials, and every failure turned into a MoatError that says what Kubernetes
 * said. @kubernetes/client-node loads the config and runs watches; requests are plain HTTP so a call costs one
 * round trip (no discovery) and its errors keep the apiserver's own Status message.
 */
export class Kube {
  private constructor(
    readonly config: KubeConfig,
    readonly server: string,
    private readonly agent: HttpAgent | HttpsAgent,
  ) {}

  /** `kubeconfig`: a file; without it, in a pod the service account, elsewhere $KUBECONFIG or ~/.kube/config. */
  static async connect(kubeconfig?: string): Promise<Kube> {
    const config = new KubeConfig();
    try {
      if (kubeconfig) config.loadFromFile(kubeconfig);
      else config.loadFromDefault();
    } catch (err) {
      throw new Error(`cannot load the kubeconfig${kubeconfig ? ` ${kubeconfig}` : ''}: ${(err as Error).message}`);
    }
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new Error(`the kubeconfig${kubeconfig ? ` ${kubeconfig}` : ''} has no current cluster (kubectl config use-context NAME)`);
    const tls: RequestOptions = {};
    await config.applyToHTTPSOptions(tls);
    const server = cluster.server.replace(/\/+$/, '');
    const agent = server.startsWith('https:')
      ? new HttpsAgent({
          keepAlive: true,
          ca: tls.ca,
          cert: tls.cert,
          key: tls.key,
          ...(tls.rejectUnauthorized !== undefined ? { rejectUnauthorized: tls.rejectUnauthorized } : {}),
          ...(tls.servername ? { servername: tls.servername } : {}),
        })
      : new HttpAgent({ keepAlive: true });
    return new Kube(config, server, agent);
  }

  /** The namespace of the kubeconfig's context (in a pod: its own), where Moat keeps what is its own (its Lease). */
  get namespace(): string {
    return this.config.getContextObject(this.config.getCurrentContext())?.namespace ?? 'default';
  }

  /** Fresh credentials per call: a service account's token file is rotated under a running pod. */
  async headers(): Promise<OutgoingHttpHeaders> {
    const opts: RequestOptions = {};
    await this.config.applyToHTTPSOptions(opts);
    const headers = (opts.headers ?? {}) as OutgoingHttpHeaders;
    return opts.auth ? { ...headers, authorization: `Basic ${Buffer.from(opts.auth).toString('base64')}` } : { ...headers };
  }

  /** TLS and credentials for a WebSocket to the apiserver (pods/exec). */
  async socketOptions(): Promise<RequestOptions> {
    const opts: RequestOptions = {};
    await this.config.applyToHTTPSOptions(opts);
    return opts;
  }

  /** One call, answered with JSON; `what` names the object in error messages ("sandbox default/foo"). */
  async call<T>(method: string, path: string, what: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const text = await this.send(method, path, what, body, contentType);
    return (text ? JSON.parse(text) : {}) as T;
  }

  /** A GET answered with text (a pod's log). */
  text(path: string, what: string): Promise<string> {
    return this.send('GET', path, what);
  }

  private async send(method: string, path: string, what: string, body?: unknown, contentType = 'application/json'): Promise<string> {
    const headers = { ...(await this.headers()), accept: 'application/json' } as OutgoingHttpHeaders;
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    if (data) Object.assign(headers, { 'content-type': contentType, 'content-length': data.length });
    const url = new URL(this.server + path);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = send(url, { method, headers, agent: this.agent, timeout: 30_000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
      req.on('error', reject);
      req.end(data);
    }).catch((err: NodeJS.ErrnoException) => {
      // A refused connection sent nothing; a request that lost its answer may have been applied.
      const effect = method === 'GET' ? '' : NOT_SENT.has(err.code ?? '') ? `; ${what} is unchanged` : `; whether ${what} changed is unknown: read it again`;
      throw new MoatError(503, 'ServiceUnavailable', `the Kubernetes API server at ${this.server} cannot be reached (${err.message})${effect}`);
    });
    if (status >= 200 && status < 300) return text;
    throw kubeError(status, text, what);
  }

  get<T>(path: string, what: string): Promise<T> {
    return this.call<T>('GET', path, what);
  }

  /** A GET whose 404 is an answer, not an error. */
  async find<T>(path: string, what: string): Promise<T | undefined> {
    try {
      return await this.get<T>(path, what);
    } catch (err) {
      if (err instanceof MoatError && err.code === 404) return undefined;
      throw err;
    }
  }

  mergePatch<T>(path: string, what: string, patch: unknown): Promise<T> {
    return this.call<T>('PATCH', path, what, patch, 'application/merge-patch+json');
  }

  /**
   * Watches `path` (a collection) from `resourceVersion`, calling `onEvent` per change until aborted. The watch is
   * re-opened after the apiserver ends it (it does, every few minutes) or goes away; `onGap` runs before a re-open,
   * so the caller can relist what it might have missed.
   */
  watch(path: string, params: Record<string, string>, onEvent: (type: string, obj: unknown) => void, onGap: () => void): () => void {
    const watch = new Watch(this.config);
    let stopped = false;
    let abort: AbortController | undefined;
    let retry: NodeJS.Timeout | undefined;
    const open = () => {
      if (stopped) return;
      watch
        .watch(path, { ...params, allowWatchBookmarks: false }, onEvent, () => {
          if (stopped) return;
          retry = setTimeout(() => {
            onGap();
            open();
          }, 1000);
        })
        .then((a) => {
          abort = a;
          if (stopped) a.abort();
        })
        .catch(() => {
          if (!stopped) retry = setTimeout(open, 1000);
        });
    };
    open();
    return () => {
      stopped = true;
      clearTimeout(retry);
      abort?.abort();
    };
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Kubernetes' Status → MoatError with the same code and the apiserver's message (RBAC denials name the verb and resource). */
export function kubeError(status: number, text: string, what: string): MoatError {
  let message = text.trim().slice(0, 2000);
  let reason = '';
  try {
    const s = JSON.parse(text) as { message?: string; reason?: string };
    message = s.message ?? message;
    reason = s.reason ?? '';
  } catch {
    /* not a Status: keep the text */
  }
  if (status === 403) return new MoatError(403, 'Forbidden', `Kubernetes refused Moat access to ${what}: ${message}`);
  if (status === 404) return new MoatError(404, 'NotFound', `${what}: ${message}`);
  if (status === 409) return new MoatError(409, reason === 'AlreadyExists' ? 'AlreadyExists' : 'Conflict', `${what}: ${message}`);
  if (status === 422 || status === 400) return new MoatError(422, 'Invalid', `${what}: ${message}`);
  if (status === 401) return new MoatError(503, 'ServiceUnavailable', `Moat's credentials for the Kubernetes API were refused (${message})`);
  return new MoatError(status >= 500 ? 503 : status, reason || 'KubernetesError', `${what}: Kubernetes answered ${status}: ${message}`);
}

/** A create into a namespace the cluster lacks: say what to do, since Moat's agents name namespaces there too. */
export function missingNamespace(err: unknown, namespace: string): unknown {
  if (!(err instanceof MoatError && err.code === 404 && /namespaces? "[^"]*" not found/.test(err.message))) return err;
  return new MoatError(
    404,
    'NotFound',
    `namespace "${namespace}" does not exist in the cluster; each Moat agent's namespace is the Kubernetes namespace of that name (kubectl create namespace ${namespace})`,
  );
}
