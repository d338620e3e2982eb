import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { RUNTIME_CLASSES, type RuntimeClassName } from '@moat/core';
import { builtinDrivers } from '@moat/runtime';
import { defaultDataDir, startServer, type NetworkOptions, type RunningServer, type ServerOptions } from '@moat/server';

/** The image cache shared by every test server, so `base` is built once per machine (as `moat up` does). */
export const sharedImagesDir = () => process.env.MOAT_IMAGES_DIR ?? join(defaultDataDir(), 'images');

/**
 * Test servers' own network names and range, so a Moat server on this machine is never disturbed.
 * MOAT_TEST_NET=1..19 picks another set, so two test runs on one machine do not share a firewall table.
 */
export const TEST_NETWORK = testNetwork(Number(process.env.MOAT_TEST_NET ?? 0));

function testNetwork(i: number) {
  if (!Number.isInteger(i) || i < 0 || i > 19) throw new Error(`MOAT_TEST_NET must be 0-19, not ${process.env.MOAT_TEST_NET}`);
  return {
    name: `moate2e${i || ''}`,
    // Prefixes never start one another nor the dev cluster's `mk8s-*`: every interface with a server's prefix is taken for one of its sandboxes'.
    ifPrefix: i < 10 ? `m${'efgijslnrp'[i]}` : `mq${'abcdefghij'[i - 10]}`,
    subnet: `10.${234 + i}.0.0/16`,
    serviceAddress: `10.${234 + i}.0.1`,
    proxyPort: 13128 + i,
  };
}

export interface TestServer extends RunningServer {
  /** fetch against the server with the admin key. */
  api(path: string, init?: RequestInit & { json?: unknown }): Promise<Response>;
}

/** A real Moat server on loopback with its own data dir; `close` also removes every sandbox it made. */
export async function startTestServer(
  opts: Pick<ServerOptions, 'dataDir' | 'maxUploadBytes' | 'imagesDir' | 'registries' | 'maxLayerBytes' | 'prepareDefaultImage'> & {
    network?: NetworkOptions;
  } = {},
): Promise<TestServer> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'moat-test-')));
  const server = await startServer({
    port: 0,
    dataDir,
    imagesDir: opts.imagesDir ?? sharedImagesDir(),
    // Tests never reach Docker Hub: a name without a registry host is only looked up here.
    registries: { unqualified: false, ...opts.registries },
    network: { ...TEST_NETWORK, ...opts.network },
    logger: pino({ level: process.env.MOAT_TEST_LOG ?? 'silent' }),
    ...(opts.maxUploadBytes ? { maxUploadBytes: opts.maxUploadBytes } : {}),
    ...(opts.maxLayerBytes ? { maxLayerBytes: opts.maxLayerBytes } : {}),
    ...(opts.prepareDefaultImage === false ? { prepareDefaultImage: false } : {}),
    log: (l) => process.stderr.write(`# ${l}\n`),
  });
  const api = (path: string, init: RequestInit & { json?: unknown } = {}) => {
    const headers = new Headers(init.headers);
    if (!headers.has('authorization')) headers.set('authorization', `Bearer ${server.adminKey}`);
    let body = init.body;
    if (init.json !== undefined) {
      headers.set('content-type', 'application/json');
      body = JSON.stringify(init.json);
    }
    return fetch(server.url + path, { ...init, headers, body });
  };
  return {
    ...server,
    api,
    async close() {
      // Pools first (they refill what is deleted), then claims (their sandboxes go with them), then the rest.
      for (const [group, plural] of [
        ['extensions.agents.x-k8s.io', 'sandboxwarmpools'],
        ['extensions.agents.x-k8s.io', 'sandboxclaims'],
        ['agents.x-k8s.io', 'sandboxes'],
      ]) {
        const list = (await (await api(`/apis/${group}/v1alpha1/${plural}`)).json()) as { items: { metadata: { namespace: string; name: string } }[] };
        await Promise.all(
          list.items.map((o) => api(`/apis/${group}/v1alpha1/namespaces/${o.metadata.namespace}/${plural}/${o.metadata.name}?wait=true`, { method: 'DELETE' })),
        );
      }
      await server.close();
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export const NS = '/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes';

export function sandboxBody(
  name: string,
  extra: {
    image?: string;
    command?: string[];
    limits?: Record<string, string>;
    env?: Record<string, string>;
    labels?: Record<string, string>;
    runtime?: string;
  } = {},
) {
  return {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name, ...(extra.labels ? { labels: extra.labels } : {}) },
    spec: {
      podTemplate: {
        spec: {
          ...(extra.runtime ? { runtimeClassName: extra.runtime } : {}),
          containers: [
            {
              name: 'sandbox',
              image: extra.image ?? 'base',
              ...(extra.command ? { command: extra.command } : {}),
              ...(extra.env ? { env: Object.entries(extra.env).map(([name, value]) => ({ name, value })) } : {}),
              ...(extra.limits ? { resources: { limits: extra.limits } } : {}),
            },
          ],
        },
      },
    },
  };
}

/** Create a sandbox through the API and wait until it is Ready. */
export async function createReady(server: TestServer, name: string, extra: Parameters<typeof sandboxBody>[1] = {}) {
  const res = await server.api(NS, { method: 'POST', json: sandboxBody(name, extra) });
  if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${await res.text()}`);
  // A microVM's first start on a machine downloads its kernel and boots a snapshot (minutes under emulation).
  const wait = await server.api(`${NS}/${name}/wait?timeoutSeconds=${extra.runtime === 'microvm' ? 900 : 120}`);
  if (wait.status !== 200) throw new Error(`wait ${name}: ${wait.status} ${await wait.text()}`);
  return (await wait.json()) as { metadata: { uid: string; name: string }; status: Record<string, unknown> };
}

/** Run a command through the NDJSON exec endpoint and collect it. */
export async function execApi(server: TestServer, name: string, body: Record<string, unknown>) {
  const res = await server.api(`${NS}/${name}/exec`, { method: 'POST', json: body });
  if (res.status !== 200)
    return { status: res.status, error: await res.json(), stdout: '', stderr: '', exit: undefined as undefined | Record<string, unknown> };
  let stdout = '';
  let stderr = '';
  let exit: Record<string, unknown> | undefined;
  for (const line of (await res.text()).split('\n').filter(Boolean)) {
    const m = JSON.parse(line) as { type: string; data?: string };
    if (m.type === 'stdout') stdout += Buffer.from(m.data!, 'base64').toString();
    else if (m.type === 'stderr') stderr += Buffer.from(m.data!, 'base64').toString();
    else if (m.type === 'exit' || m.type === 'error') exit = m as Record<string, unknown>;
  }
  return { status: 200, error: undefined, stdout, stderr, exit };
}

/** Ids of every sandbox with anything on the host under `dataDir`, of every runtime class (as the drivers' orphan cleanup sees them). */
export async function hostSandboxIds(dataDir: string): Promise<string[]> {
  const drivers = builtinDrivers({ root: dataDir, cacheDir: sharedImagesDir() });
  return (await Promise.all(drivers.map((d) => d.listIds()))).flat().sort();
}

export const sh = (server: TestServer, name: string, script: string, extra: Record<string, unknown> = {}) =>
  execApi(server, name, { command: ['/bin/sh', '-c', script], ...extra });

/**
 * The runtime classes the conformance suites run over: MOAT_TEST_RUNTIMES
 * (comma-separated) or all of them. One whose program is not installed is
 * skipped with that reason; CI installs them all.
 */
export function testRuntimes(): { runtime: string; skip: string | false }[] {
  const names = process.env.MOAT_TEST_RUNTIMES?.split(',').filter(Boolean) ?? RUNTIME_CLASSES;
  const program: Record<RuntimeClassName, string> = { runc: 'runc', gvisor: 'runsc', microvm: 'qemu-system-x86_64' };
  return names.map((runtime) => {
    const bin = program[runtime as RuntimeClassName];
    if (!bin) throw new Error(`MOAT_TEST_RUNTIMES: unknown runtime ${runtime}`);
    const found = spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
    return { runtime, skip: found ? false : `${bin} is not installed` };
  });
}
