import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { errorFromResponse, ExecError, MoatError, networkError } from './errors.js';
import { OutputCollector } from './exec.js';
import type { ExecResult } from './types.js';

export interface SpawnOptions {
  tty?: boolean;
  rows?: number;
  cols?: number;
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  timeoutSeconds?: number;
  onStdout?(chunk: Buffer): void;
  onStderr?(chunk: Buffer): void;
  /** Keep all output for wait()'s result (default true). Turn off for long interactive sessions. */
  collect?: boolean;
}

// Frame tags of the WebSocket exec protocol (docs/api.md, "Interactive exec").
const STDIN = 0x00;
const STDIN_EOF = 0x01;
const STDOUT = 0x01;
const STDERR = 0x02;
const SLACK_MS = 10_000;

/** A process running in a sandbox over the interactive WebSocket exec endpoint. */
export class Process {
  /** Set once the server reports the process started. */
  pid: number | undefined;
  private readonly ws: WebSocket;
  private readonly pending: (Buffer | string)[] = [];
  private readonly done: Promise<ExecResult>;
  private settled = false;

  constructor(url: string, headers: Record<string, string>, baseUrl: string, command: string[], opts: SpawnOptions = {}) {
    const out = new OutputCollector({}, opts.collect ?? true);
    this.ws = new WebSocket(url, { headers });
    this.done = new Promise<ExecResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (fn: () => void) => {
        if (this.settled) return;
        this.settled = true;
        clearTimeout(timer);
        fn();
        this.ws.close();
      };
      if (opts.timeoutSeconds) {
        // Only a backstop: the server kills the command at timeoutSeconds and reports it.
        timer = setTimeout(
          () => settle(() => reject(new MoatError(0, 'Timeout', `no exit from the command ${opts.timeoutSeconds}s after its timeout`))),
          opts.timeoutSeconds * 1000 + SLACK_MS,
        );
      }
      this.ws.on('open', () => {
        this.ws.send(
          JSON.stringify({
            command,
            env: opts.env,
            cwd: opts.cwd,
            user: opts.user,
            tty: opts.tty ?? false,
            rows: opts.rows,
            cols: opts.cols,
            timeoutSeconds: opts.timeoutSeconds ?? 0,
          }),
        );
        for (const frame of this.pending.splice(0)) this.ws.send(frame);
      });
      this.ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
        const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
        if (isBinary) {
          const payload = buf.subarray(1);
          if (buf[0] === STDOUT) {
            out.push('stdout', payload);
            opts.onStdout?.(payload);
          } else if (buf[0] === STDERR) {
            out.push('stderr', payload);
            opts.onStderr?.(payload);
          }
          return;
        }
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(buf.toString('utf8'));
        } catch {
          return settle(() => reject(new MoatError(0, 'ProtocolError', `malformed message from the exec socket: ${buf.toString('utf8').slice(0, 200)}`)));
        }
        if (msg.type === 'started') this.pid = Number(msg.pid);
        else if (msg.type === 'exit')
          settle(() =>
            resolve(
              out.result({
                exitCode: Number(msg.exitCode),
                signal: typeof msg.signal === 'string' ? msg.signal : null,
                timedOut: msg.timedOut === true,
                durationMs: Number(msg.durationMs ?? 0),
              }),
            ),
          );
        else if (msg.type === 'error') settle(() => reject(new ExecError(String(msg.reason ?? 'Unknown'), String(msg.message ?? 'exec failed'))));
      });
      // The handshake was refused (401, 404, 409...): the body is a Status worth showing.
      this.ws.on('unexpected-response', (req, res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          settle(() => reject(errorFromResponse(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'), 'exec (WebSocket)')));
          req.destroy();
        });
      });
      this.ws.on('error', (err) => settle(() => reject(networkError(baseUrl, err))));
      this.ws.on('close', (code) =>
        settle(() => reject(new MoatError(0, 'ProtocolError', `the exec connection closed before the command exited (code ${code})`))),
      );
    });
    // Callers who never wait() must not crash the process with an unhandled rejection.
    this.done.catch(() => {});
  }

  /** Write to the process's stdin. */
  write(data: string | Buffer): void {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.send(Buffer.concat([Buffer.from([STDIN]), bytes]));
  }

  /** Close the process's stdin. */
  end(): void {
    this.send(Buffer.from([STDIN_EOF]));
  }

  resize(rows: number, cols: number): void {
    this.send(JSON.stringify({ type: 'resize', rows, cols }));
  }

  kill(signal = 'SIGKILL'): void {
    this.send(JSON.stringify({ type: 'signal', signal }));
  }

  wait(): Promise<ExecResult> {
    return this.done;
  }

  /** Drop the connection; the server then kills the process group. */
  close(): void {
    this.ws.close();
  }

  private send(frame: Buffer | string): void {
    if (this.settled) return;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(frame);
    else if (this.ws.readyState === WebSocket.CONNECTING) this.pending.push(frame);
  }
}
