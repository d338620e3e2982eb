import { setTimeout as sleep } from 'node:timers/promises';
import type { TestServer } from './server.js';

export const EXT = '/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/default';

type Obj = { metadata: { name: string; uid: string; labels?: Record<string, string>; annotations?: Record<string, string> }; spec: any; status: any };

export function templateBody(name: string, container: Record<string, unknown> = {}, spec: Record<string, unknown> = {}) {
  return {
    apiVersion: 'extensions.agents.x-k8s.io/v1alpha1',
    kind: 'SandboxTemplate',
    metadata: { name },
    spec: { podTemplate: { spec: { containers: [{ name: 'main', image: 'base', ...container }] } }, ...spec },
  };
}

export const poolBody = (name: string, template: string, replicas: number, extra: Record<string, unknown> = {}) => ({
  apiVersion: 'extensions.agents.x-k8s.io/v1alpha1',
  kind: 'SandboxWarmPool',
  metadata: { name },
  spec: { replicas, sandboxTemplateRef: { name: template }, ...extra },
});

export const claimBody = (name: string, template: string, extra: Record<string, unknown> = {}) => ({
  apiVersion: 'extensions.agents.x-k8s.io/v1alpha1',
  kind: 'SandboxClaim',
  metadata: { name },
  spec: { sandboxTemplateRef: { name: template }, ...extra },
});

export async function apiJson<T = Obj>(server: TestServer, path: string, init: RequestInit & { json?: unknown } = {}, expect?: number): Promise<T> {
  const res = await server.api(path, init);
  const body = (await res.json()) as T;
  if (expect !== undefined && res.status !== expect)
    throw new Error(`${init.method ?? 'GET'} ${path}: expected ${expect}, got ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

export const create = (server: TestServer, plural: string, body: unknown) => apiJson(server, `${EXT}/${plural}`, { method: 'POST', json: body }, 201);

export const condition = (o: Obj, type = 'Ready') =>
  (o.status.conditions as { type: string; status: string; reason: string; message: string }[]).find((c) => c.type === type);

/** Poll until `check` returns a value (not undefined), or fail with the last seen state. */
export async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(100);
  }
}

/** Members of a pool as the sandbox API lists them (the pool's selector). */
export async function poolMembers(server: TestServer, pool: string): Promise<Obj[]> {
  const list = await apiJson<{ items: Obj[] }>(
    server,
    `/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes?labelSelector=agents.x-k8s.io/warm-pool=${pool}`,
  );
  return list.items.filter((s) => s.status.phase !== 'Terminating');
}

export function poolReady(server: TestServer, pool: string, replicas: number, timeoutMs = 90_000) {
  return until(
    `pool ${pool} to have ${replicas} ready`,
    async () => {
      const p = await apiJson(server, `${EXT}/sandboxwarmpools/${pool}`);
      return p.status.readyReplicas === replicas && p.status.replicas === replicas ? p : undefined;
    },
    timeoutMs,
  );
}
