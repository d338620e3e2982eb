import { Duplex } from 'node:stream';
import WebSocket from 'ws';
import type { Kube } from './kube.js';

/** A container of a pod, as pods/exec addresses it. */
export interface PodRef {
  namespace: string;
  pod: string;
  container: string;
}

// The channel protocol of pods/exec over WebSocket: each message starts with its channel.
const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STATUS = 3;
const CLOSE = 255; // v5: [255, channel] half-closes a channel
const PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io'];
const STDERR_KEPT = 16 * 1024;

/** The exec could not start or ended with a failure Status (the kubelet's own message: a missing binary, say). */
export class ExecFailure extends Error {
  constructor(
    message: string,
    /** True when the command's program was not found in the container. */
    readonly notFound: boolean,
  ) {
    super(message);
    this.name = 'ExecFailure';
  }
}

/**
 * One pods/exec call as a byte stream: what is written goes to the command's stdin, its stdout is what is read,
 * `end()` closes its stdin (v5.channel.k8s.io; the apiservers of Kubernetes ≥ 1.30 speak it). It emits 'connect'
 * once the apiserver upgraded the connection, as a socket does. A failure Status from the kubelet (the command
 * is missing, the container is gone) destroys the stream with an ExecFailure; `stderr` keeps the first 16 KiB.
 * With `keepAliveMs` it pings the apiserver that often and fails once a ping goes unanswered until the next one.
 */
export class PodExecStream extends Duplex {
  stderr = '';
  /** The command's exit code, once its Status arrived. */
  exitCode?: number;
  private ws?: WebSocket;
  private waiting: (() => void)[] = [];
  private keepAlive?: NodeJS.Timeout;

  constructor(kube: Kube, ref: PodRef, command: string[], opts: { allowHalfOpen?: boolean; keepAliveMs?: number } = {}) {
    super({ allowHalfOpen: opts.allowHalfOpen ?? false });
    const q = new URLSearchParams({ container: ref.container, stdin: 'true', stdout: 'true', stderr: 'true' });
    for (const c of command) q.append('command', c);
    const url = `${kube.server.replace(/^http/, 'ws')}/api/v1/namespaces/${encodeURIComponent(ref.namespace)}/pods/${encodeURIComponent(ref.pod)}/exec?${q}`;
    kube.socketOptions().then(
      (o) =>
        this.open(new WebSocket(url, PROTOCOLS, { ...o, perMessageDeflate: false, handshakeTimeout: 15_000 } as WebSocket.ClientOptions), opts.keepAliveMs),
      (err: Error) => this.destroy(err),
    );
  }

  private open(ws: WebSocket, keepAliveMs?: number) {
    this.ws = ws;
    ws.on('open', () => {
      this.emit('connect');
      this.waiting.splice(0).forEach((f) => f());
      if (keepAliveMs) this.startKeepAlive(ws, keepAliveMs);
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => {
        const message = statusMessage(body);
        // The apiserver relays pods/exec to the node's kubelet: say which part failed.
        const hint = /error dialing backend/.test(message)
          ? ' (the node’s kubelet cannot be reached: the pod may still run)'
          : /containerd\.sock|crio\.sock|code = Unavailable/.test(message)
            ? ' (the node’s container runtime cannot be reached: the container may still run)'
            : '';
        this.destroy(new ExecFailure(`pods/exec was refused (${res.statusCode}): ${message}${hint}`, false));
      });
    });
    ws.on('message', (data: Buffer) => this.onMessage(data));
    ws.on('error', (err) => this.destroy(err));
    ws.on('close', () => {
      if (!this.readableEnded) this.push(null);
    });
  }

  /** A long-lived session would otherwise not notice a peer that vanished without closing (a node gone, a NAT's timeout). */
  private startKeepAlive(ws: WebSocket, everyMs: number) {
    let answered = true;
    ws.on('pong', () => (answered = true));
    this.keepAlive = setInterval(() => {
      if (!answered) return void this.destroy(new Error(`pods/exec session: no answer to a ping within ${everyMs} ms`));
      answered = false;
      ws.ping();
    }, everyMs).unref();
  }

  private onMessage(data: Buffer) {
    const channel = data[0];
    const payload = data.subarray(1);
    if (channel === STDOUT) {
      if (payload.length && !this.push(payload)) this.ws?.pause();
    } else if (channel === STDERR) {
      if (this.stderr.length < STDERR_KEPT) this.stderr += payload.toString('utf8').slice(0, STDERR_KEPT - this.stderr.length);
    } else if (channel === STATUS) {
      const status = parseStatus(payload.toString('utf8'));
      if (status.status === 'Success') this.exitCode = 0;
      else if (status.reason === 'NonZeroExitCode') this.exitCode = Number(status.details?.causes?.find((c) => c.reason === 'ExitCode')?.message ?? 1);
      else {
        const message = status.message ?? 'the exec failed';
        this.destroy(new ExecFailure(message, /no such file or directory|executable file not found|not found in \$PATH/i.test(message)));
      }
    } else if (channel === CLOSE && payload[0] === STDOUT) {
      this.push(null);
    }
  }

  /** Writes wait for the upgrade; `cb` runs once the frame is on the wire, which is the stream's backpressure. */
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const send = () => this.ws!.send(Buffer.concat([Buffer.from([STDIN]), chunk]), (err) => cb(err ?? null));
    if (this.ws?.readyState === WebSocket.OPEN) send();
    else this.waiting.push(send);
  }

  override _final(cb: (err?: Error | null) => void): void {
    const close = () => {
      if (this.ws?.protocol === 'v5.channel.k8s.io') this.ws.send(Buffer.from([CLOSE, STDIN]), () => cb());
      else cb(); // v4 cannot half-close stdin: the command sees EOF when the stream closes
    };
    if (this.ws?.readyState === WebSocket.OPEN) close();
    else this.waiting.push(close);
  }

  override _read(): void {
    this.ws?.resume();
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    clearInterval(this.keepAlive);
    const ws = this.ws;
    if (ws && ws.readyState !== WebSocket.CLOSED) ws.terminate();
    cb(err);
  }
}

interface ExecStatus {
  status?: string;
  message?: string;
  reason?: string;
  details?: { causes?: { reason?: string; message?: string }[] };
}

function parseStatus(text: string): ExecStatus {
  try {
    return JSON.parse(text) as ExecStatus;
  } catch {
    return { status: 'Failure', message: text.slice(0, 500) };
  }
}

function statusMessage(body: string): string {
  try {
    return (JSON.parse(body) as { message?: string }).message ?? body.slice(0, 500);
  } catch {
    return body.slice(0, 500);
  }
}

/** Runs a command to completion with `stdin`: its exit code, stdout, and stderr (for messages). */
export async function execOnce(kube: Kube, ref: PodRef, command: string[], stdin?: Buffer): Promise<{ exitCode: number; stdout: Buffer; stderr: string }> {
  const stream = new PodExecStream(kube, ref, command);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<void>((resolve, reject) => {
    stream.once('end', resolve);
    stream.once('error', reject);
  });
  stream.end(stdin ?? Buffer.alloc(0));
  await done;
  return { exitCode: stream.exitCode ?? -1, stdout: Buffer.concat(chunks), stderr: stream.stderr };
}
