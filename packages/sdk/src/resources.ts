import { MoatError } from './errors.js';
import type { HttpClient } from './http.js';
import { CONDITION, type KubeObject, type ObjectList } from './types.js';

export interface WaitOptions {
  /** Condition type that must become "True". Default `Ready`. */
  condition?: string;
  /** Default 60. */
  timeoutSeconds?: number;
}

/** Slack on top of a server-side timeout before the client gives up on the HTTP exchange. */
const SERVER_TIMEOUT_SLACK_MS = 10_000;

/**
 * CRUD over one namespaced collection, `/apis/{apiVersion}/namespaces/{ns}/{plural}`.
 * Sandboxes use it, and so can later kinds (SandboxTemplate, SandboxClaim, ...)
 * that follow the same conventions.
 */
export class ResourceClient<T extends KubeObject = KubeObject> {
  constructor(
    private readonly http: HttpClient,
    readonly apiVersion: string,
    readonly plural: string,
    readonly namespace: string,
  ) {}

  get collectionPath(): string {
    return `/apis/${this.apiVersion}/namespaces/${encodeURIComponent(this.namespace)}/${this.plural}`;
  }

  itemPath(name: string): string {
    if (!name) throw new MoatError(0, 'BadRequest', 'a name is required');
    return `${this.collectionPath}/${encodeURIComponent(name)}`;
  }

  async list(opts: { labelSelector?: string } = {}): Promise<T[]> {
    const list = await this.http.json<ObjectList<T>>('GET', this.collectionPath, { query: { labelSelector: opts.labelSelector || undefined } });
    return list?.items ?? [];
  }

  get(name: string): Promise<T> {
    return this.http.json<T>('GET', this.itemPath(name));
  }

  create(obj: KubeObject): Promise<T> {
    return this.http.json<T>('POST', this.collectionPath, { json: obj });
  }

  /** Replace an object's labels, annotations and spec (kinds that allow it: templates, pools). */
  replace(name: string, obj: KubeObject): Promise<T> {
    return this.http.json<T>('PUT', this.itemPath(name), { json: obj });
  }

  /** With `wait` (default true) the call returns once everything is gone. */
  async delete(name: string, opts: { wait?: boolean } = {}): Promise<T | undefined> {
    const wait = opts.wait ?? true;
    return this.http.json<T | undefined>('DELETE', this.itemPath(name), {
      query: { wait: wait ? 'true' : undefined },
      timeoutMs: wait ? Math.max(this.http.defaultTimeoutMs, 300_000) : undefined,
    });
  }

  /**
   * Block until a condition is True, via the server's wait endpoint. Loops in
   * case the server caps how long one wait request may last.
   */
  async wait(name: string, opts: WaitOptions = {}): Promise<T> {
    const condition = opts.condition ?? CONDITION.Ready;
    const deadline = Date.now() + (opts.timeoutSeconds ?? 60) * 1000;
    for (;;) {
      const remaining = Math.ceil((deadline - Date.now()) / 1000);
      try {
        return await this.http.json<T>('GET', `${this.itemPath(name)}/wait`, {
          query: { condition, timeoutSeconds: Math.max(remaining, 1) },
          timeoutMs: Math.max(remaining, 1) * 1000 + SERVER_TIMEOUT_SLACK_MS,
        });
      } catch (err) {
        if (!(err instanceof MoatError) || err.code !== 408 || deadline - Date.now() < 1000) throw err;
        await new Promise((r) => setTimeout(r, 200)); // never spin if the server answers 408 early
      }
    }
  }
}
