// What the volume and backup tests share: sandbox bodies with volumes, and steps that must succeed.
import assert from 'node:assert/strict';
import { NS, sandboxBody, sh, type TestServer } from './server.js';

export type Body = ReturnType<typeof sandboxBody> & { spec: Record<string, unknown> & { podTemplate: { spec: Record<string, unknown> } } };

/** A sandbox whose /data is a volumeClaimTemplate's volume (`data-<name>`). */
export function withTemplate(name: string, runtime: string, storage: string, whenDeleted?: 'Retain' | 'Delete'): Body {
  const body = sandboxBody(name, { runtime }) as Body;
  body.spec.volumeClaimTemplates = [{ metadata: { name: 'data' }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage } } } }];
  if (whenDeleted) body.spec.persistentVolumeClaimRetentionPolicy = { whenDeleted };
  return body;
}

/** A sandbox whose /data (or `mountPath`) is an existing named volume. */
export function withClaim(name: string, runtime: string, claimName: string, mountPath?: string): Body {
  const body = sandboxBody(name, { runtime }) as Body;
  body.spec.podTemplate.spec.volumes = [{ name: 'work', persistentVolumeClaim: { claimName } }];
  if (mountPath) (body.spec.podTemplate.spec.containers as Record<string, unknown>[])[0]!.volumeMounts = [{ name: 'work', mountPath }];
  return body;
}

/** How long a first start may take: a microVM's first on a machine boots its snapshot under emulation. */
export const waitSeconds = (runtime: string) => (runtime === 'microvm' ? 900 : 120);

/** Creates the sandbox and waits until it is Ready; returns it. */
export async function ready<T = unknown>(server: TestServer, body: Body, runtime: string): Promise<T> {
  const res = await server.api(NS, { method: 'POST', json: body });
  assert.equal(res.status, 201, await res.text());
  return waitReady<T>(server, body.metadata.name, runtime);
}

export async function waitReady<T = unknown>(server: TestServer, name: string, runtime: string): Promise<T> {
  const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=${waitSeconds(runtime)}`);
  const text = await wait.text();
  assert.equal(wait.status, 200, text);
  return JSON.parse(text) as T;
}

export async function remove(server: TestServer, name: string): Promise<void> {
  const res = await server.api(`${NS}/${name}?wait=true`, { method: 'DELETE' });
  assert.equal(res.status, 200, await res.text());
}

/** A shell script that must succeed; its stdout. */
export async function run(server: TestServer, name: string, script: string): Promise<string> {
  const r = await sh(server, name, script);
  assert.equal(r.status, 200, JSON.stringify(r.error));
  assert.equal(r.exit?.exitCode, 0, `${script}: ${r.stderr}`);
  return r.stdout;
}
