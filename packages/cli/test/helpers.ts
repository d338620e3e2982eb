import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { EventEmitter } from 'node:events';
import { main } from '../src/index.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

/** Run the CLI in-process with captured output and a controlled environment. */
export async function run(argv: string[], opts: { env?: Record<string, string | undefined>; stdin?: string | Buffer; cwd?: string } = {}): Promise<RunResult> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const sink = (into: Buffer[]) => {
    const s = new PassThrough();
    s.on('data', (c: Buffer) => into.push(c));
    return s;
  };
  const stdin = new PassThrough();
  stdin.end(opts.stdin ?? '');
  const code = await main(argv, {
    stdout: sink(out),
    stderr: sink(err),
    stdin,
    env: { HOME: '/nonexistent-home', ...opts.env },
    cwd: opts.cwd ?? process.cwd(),
    signals: new EventEmitter(),
    exit: (c) => {
      throw new Error(`exit(${c}) called`);
    },
  });
  await new Promise((r) => setImmediate(r));
  const stdoutBytes = Buffer.concat(out);
  return { code, stdout: stdoutBytes.toString(), stderr: Buffer.concat(err).toString(), stdoutBytes };
}

type Handler = (req: IncomingMessage, body: Buffer, url: URL) => { status: number; body?: unknown; raw?: Buffer | string; type?: string } | void;

/** A minimal HTTP server speaking just enough of docs/api.md for one test. */
export async function fakeServer(handler: Handler): Promise<{ url: string; requests: { method: string; url: URL; body: Buffer }[]; close(): Promise<void> }> {
  const requests: { method: string; url: URL; body: Buffer }[] = [];
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const url = new URL(req.url!, 'http://x');
    requests.push({ method: req.method!, url, body });
    const r = handler(req, body, url) ?? { status: 404, body: status(404, 'NotFound', `no route ${req.method} ${url.pathname}`) };
    const payload = r.raw ?? (r.body === undefined ? '' : JSON.stringify(r.body));
    res.writeHead(r.status, { 'content-type': r.type ?? 'application/json' });
    res.end(payload);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

export function status(code: number, reason: string, message: string) {
  return { kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message };
}

export function sandbox(name: string, extra: { phase?: string; image?: string; created?: string; labels?: Record<string, string> } = {}) {
  return {
    apiVersion: 'agents.x-k8s.io/v1alpha1',
    kind: 'Sandbox',
    metadata: {
      name,
      namespace: 'default',
      uid: 'u',
      resourceVersion: '1',
      creationTimestamp: extra.created ?? new Date().toISOString(),
      labels: extra.labels,
    },
    spec: { podTemplate: { spec: { containers: [{ name: 'sandbox', image: extra.image ?? 'base' }] } } },
    status: { phase: extra.phase ?? 'Running', conditions: [], runtimeClassName: 'runc', image: { name: 'base', digest: 'sha256:0123456789abcdef0123' } },
  };
}

export const ndjson = (events: unknown[]) => ({ status: 200, raw: events.map((e) => JSON.stringify(e) + '\n').join(''), type: 'application/x-ndjson' });
export const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
export const SBX = '/apis/agents.x-k8s.io/v1alpha1/namespaces/default/sandboxes';
