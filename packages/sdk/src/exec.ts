import { StringDecoder } from 'node:string_decoder';
import { ExecError, isAbortTimeout, MoatError, networkError, timeoutError } from './errors.js';
import type { HttpClient } from './http.js';
import { parseNdjson, toExecEvent } from './ndjson.js';
import type { ExecEvent, ExecResult } from './types.js';

/** A shell command line (run with `/bin/sh -c`) or an argv. */
export type Command = string | string[];

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Fed to the command's stdin, then EOF. */
  stdin?: string | Buffer;
  /** The server kills the command after this long (SIGKILL, `timedOut: true`). */
  timeoutSeconds?: number;
  onStdout?(chunk: string): void;
  onStderr?(chunk: string): void;
}

const SLACK_MS = 10_000;

export function toArgv(cmd: Command): string[] {
  const argv = typeof cmd === 'string' ? ['/bin/sh', '-c', cmd] : cmd;
  if (!Array.isArray(argv) || argv.length === 0) throw new MoatError(0, 'BadRequest', 'a command is required');
  return argv;
}

/** Text stdin travels as is; bytes as base64, so binary input arrives intact. */
function stdinField(stdin: string | Buffer | undefined): { stdin?: string; stdinBase64?: string } {
  if (stdin === undefined) return {};
  return typeof stdin === 'string' ? { stdin } : { stdinBase64: Buffer.from(stdin).toString('base64') };
}

/**
 * Run a command over the NDJSON endpoint and yield its events as they arrive.
 * Ends after the `exit` or `error` event.
 */
export async function* execStream(
  http: HttpClient,
  sandboxPath: string,
  cmd: Command,
  opts: Omit<ExecOptions, 'onStdout' | 'onStderr'> = {},
): AsyncGenerator<ExecEvent> {
  const path = `${sandboxPath}/exec`;
  const timeoutMs = opts.timeoutSeconds ? opts.timeoutSeconds * 1000 + SLACK_MS : null;
  const res = await http.request('POST', path, {
    json: { command: toArgv(cmd), env: opts.env, cwd: opts.cwd, user: opts.user, ...stdinField(opts.stdin), timeoutSeconds: opts.timeoutSeconds },
    timeoutMs,
  });
  if (!res.body) throw new MoatError(0, 'ProtocolError', `POST ${path}: empty response`);
  try {
    for await (const raw of parseNdjson(res.body as unknown as AsyncIterable<Uint8Array>)) {
      const ev = toExecEvent(raw);
      yield ev;
      if (ev.type === 'exit' || ev.type === 'error') return;
    }
  } catch (err) {
    if (err instanceof MoatError) throw err;
    if (isAbortTimeout(err)) throw timeoutError(`POST ${path}`, timeoutMs ?? 0);
    throw networkError(http.baseUrl, err);
  }
  throw new MoatError(0, 'ProtocolError', 'the exec stream ended before the command exited');
}

/** Accumulates output of one process; shared by exec() and spawn(). */
export class OutputCollector {
  private readonly chunks = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  // One decoder per stream so a character split across chunks reaches callbacks whole.
  private readonly decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };

  constructor(
    private readonly callbacks: { onStdout?(s: string): void; onStderr?(s: string): void } = {},
    private readonly keep = true,
  ) {}

  push(stream: 'stdout' | 'stderr', data: Buffer): void {
    if (this.keep) this.chunks[stream].push(data);
    const cb = stream === 'stdout' ? this.callbacks.onStdout : this.callbacks.onStderr;
    if (cb) {
      const s = this.decoders[stream].write(data);
      if (s) cb(s);
    }
  }

  result(exit: { exitCode: number; signal: string | null; timedOut: boolean; durationMs: number }): ExecResult {
    for (const stream of ['stdout', 'stderr'] as const) {
      const rest = this.decoders[stream].end();
      const cb = stream === 'stdout' ? this.callbacks.onStdout : this.callbacks.onStderr;
      if (rest && cb) cb(rest);
    }
    return {
      stdout: Buffer.concat(this.chunks.stdout).toString('utf8'),
      stderr: Buffer.concat(this.chunks.stderr).toString('utf8'),
      exitCode: exit.exitCode,
      signal: exit.signal,
      timedOut: exit.timedOut,
      durationMs: exit.durationMs,
    };
  }
}

export async function collectExec(events: AsyncIterable<ExecEvent>, opts: Pick<ExecOptions, 'onStdout' | 'onStderr'> = {}): Promise<ExecResult> {
  const out = new OutputCollector(opts);
  for await (const ev of events) {
    if (ev.type === 'stdout' || ev.type === 'stderr') out.push(ev.type, ev.data);
    else if (ev.type === 'exit') return out.result(ev);
    else if (ev.type === 'error') throw new ExecError(ev.reason, ev.message);
  }
  throw new MoatError(0, 'ProtocolError', 'the exec stream ended before the command exited');
}
