import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { startServer, type RunningServer } from '@moat/server';
import { devClusterUp, type DevCluster } from './dev-cluster.js';

/** The tutorial's python-runtime as a SandboxTemplate (the body Moat's API takes). */
export function pythonTemplateBody(name: string, image: string) {
  const container = {
    name: 'python-runtime',
    image,
    ports: [{ containerPort: 8888 }],
    readinessProbe: { httpGet: { path: '/', port: 8888 }, periodSeconds: 1 },
  };
  // The tutorial's server ignores SIGTERM: without a short grace period every delete would wait 30 s for the kubelet's SIGKILL.
  return { metadata: { name }, spec: { podTemplate: { spec: { containers: [container], terminationGracePeriodSeconds: 1 } } } };
}

/** A Moat server in cluster mode on loopback, against the dev cluster. */
export function clusterServer(dataDir: string, kubeconfig: string): Promise<RunningServer> {
  return startServer({ port: 0, dataDir, kubernetes: { kubeconfig }, logger: pino({ level: process.env.MOAT_TEST_LOG ?? 'silent' }) });
}

export interface ClusterMoat {
  cluster: DevCluster;
  server: RunningServer;
  dir: string;
  /** The admin's agent's namespace, fresh, in Moat and in Kubernetes. */
  namespace: string;
  /** A key of that agent. */
  agentKey: string;
  /** fetch against the server with the admin key. */
  api(path: string, init?: RequestInit & { json?: unknown }): Promise<Response>;
  /** The tutorial's python-runtime as a SandboxTemplate named `name` in the namespace. */
  pythonTemplate(name: string): Promise<void>;
  close(): Promise<void>;
}

/** The dev cluster, Moat on it, and an agent `agent` of the admin whose namespace (admin-<agent>) exists there. */
export async function startClusterMoat(agent: string): Promise<ClusterMoat> {
  const cluster = await devClusterUp();
  const namespace = `admin-${agent}`;
  // Each Moat agent's namespace is a Kubernetes namespace of that name; what an interrupted run left goes with it.
  await cluster.kubectl('delete', 'namespace', namespace, '--ignore-not-found', '--wait');
  await cluster.kubectl('create', 'namespace', namespace);
  const dir = await mkdtemp(join(tmpdir(), 'moat-cluster-'));
  const server = await clusterServer(join(dir, 'server'), cluster.kubeconfig);
  const api = (path: string, init: RequestInit & { json?: unknown } = {}) =>
    fetch(server.url + path, {
      ...init,
      headers: { authorization: `Bearer ${server.adminKey}`, ...(init.json !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : {}),
    });
  const created = await api('/apis/moat.dev/v1/users/admin/agents', { method: 'POST', json: { name: agent } });
  assert.equal(created.status, 201, await created.text());
  const key = await api('/apis/moat.dev/v1/users/admin/keys', { method: 'POST', json: { name: agent, agent } });
  assert.equal(key.status, 201);
  const agentKey = ((await key.json()) as { key: string }).key;
  return {
    cluster,
    server,
    dir,
    namespace,
    agentKey,
    api,
    async pythonTemplate(name: string) {
      const r = await api(`/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/${namespace}/sandboxtemplates`, {
        method: 'POST',
        json: pythonTemplateBody(name, cluster.pythonImage),
      });
      assert.equal(r.status, 201, await r.text());
    },
    async close() {
      await server.close();
      await cluster.kubectl('delete', 'namespace', namespace, '--ignore-not-found', '--wait=false');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
