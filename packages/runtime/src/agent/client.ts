import { connect } from 'node:net';
import { posix } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import {
  FrameDecoder,
  FrameType as T,
  HEADER_SIZE,
  MAX_FRAME,
  ProtocolError,
  decodeRecord,
  encodeRecord,
  frameHeader,
  resizePayload,
  u32,
  type AgentRecord,
  type Frame,
  type RecordPairs,
} from './protocol.js';

/**
 * A failed agent operation. `code` is the errno name the agent reported
 * (ENOENT, EISDIR, EACCES, ENOTEMPTY...), or one of:
 * - EUNAVAILABLE: the agent could not be reached or the connection broke;
 * - EPROTO: the agent violated the protocol (it is not trusted);
 * - ETIMEDOUT: ping got no answer in time, or dial's `timeoutMs` passed;
 * - EKILLED: the exec was cancelled with `kill()`;
 * - E2BIG: a listing exceeded `maxListEntries`;
 * - EINVAL: the request cannot be encoded (NUL bytes, empty command...).
 */
export class AgentError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}

export interface Entry {
  name: string;
  /** The parent path joined with name (LIST), or the requested path (STAT, WRITE, MKDIR, RENAME). */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits (07777). */
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
  /** Symlinks only. */
  target?: string;
}

export interface ExecRequest {
  command: string[];
  /** The complete environment; the agent adds PATH, HOME, USER, LOGNAME (and TERM with a tty) when missing. */
  env?: Record<string, string>;
  /** Absolute; default: the user's home if it exists, else `/`. */
  cwd?: string;
  /** Name or numeric uid, optionally `:group`; default root. */
  user?: string;
  tty?: boolean;
  rows?: number;
  cols?: number;
}

export interface ExecHandlers {
  onStdout?(b: Buffer): void;
  onStderr?(b: Buffer): void;
}

export interface ExecExit {
  /** The exit status, or 128+N when killed by signal N. */
  exitCode: number;
  signal: number | null;
}

export interface ExecHandle {
  /** Resolves once the program runs; rejects (like `done`) if it could not be started. */
  pid: Promise<number>;
  done: Promise<ExecExit>;
  /** Queues stdin. Returns false when the socket buffer is full: wait for `drain()` before writing more. */
  writeStdin(b: Buffer | string): boolean;
  /** Resolves when queued stdin has been handed to the kernel (or the exec is over). */
  drain(): Promise<void>;
  closeStdin(): void;
  /** Sends a signal to the program's process group (the foreground group with a tty). */
  signal(signo: number): void;
  resize(rows: number, cols: number): void;
  /** Drops the connection: the agent SIGKILLs the process group; `done` rejects with EKILLED. */
  kill(): void;
}

export interface AgentClientOptions {
  /** Default 5000 ms. */
  connectTimeoutMs?: number;
  /** LIST answers longer than this fail with E2BIG instead of growing without bound. Default 100 000. */
  maxListEntries?: number;
}

export interface DialOptions {
  /** Loopback only: the agent refuses any other address (EINVAL). Default 127.0.0.1. */
  host?: '127.0.0.1' | '::1';
  /** For reaching the agent and the port together. Default 15000 ms (the agent itself gives up connecting after 10 s). */
  timeoutMs?: number;
  /** As for `net.connect`: when false (default), our side ends once the sandbox side has ended. */
  allowHalfOpen?: boolean;
}

type UserOpt = { user?: string };

/** Payload bytes per DATA frame (the protocol allows up to 1 MiB). */
const DATA_CHUNK = 256 * 1024;
/** Frames received but not yet consumed beyond which the socket is paused. */
const QUEUE_HIGH = 512 * 1024;
/** Below this much frame payload, header and payload are written together. */
const COALESCE = 16 * 1024;

const unavailable = (what: string, err?: NodeJS.ErrnoException) => new AgentError('EUNAVAILABLE', `${what}${err ? `: ${err.code ?? err.message}` : ''}`);
const protocolError = (msg: string) => new AgentError('EPROTO', `sandbox agent protocol error: ${msg}`);
const hex = (t: number) => `0x${t.toString(16).padStart(2, '0')}`;

/**
 * One connection = one operation. Frames are pulled with `next()`; while
 * the consumer is behind, the socket is paused so an agent can never make
 * us buffer without bound.
 */
class Conn {
  private readonly sock: Duplex;
  private readonly decoder = new FrameDecoder();
  private queue: Frame[] = [];
  private queuedBytes = 0;
  private waiter: { resolve(f: Frame): void; reject(e: Error): void } | null = null;
  private error: AgentError | null = null;
  private connected = false;
  /** We closed it: later socket events are expected, not failures. */
  private closedByUs = false;

  constructor(transport: AgentTransport, connectTimeoutMs: number) {
    this.sock = transport({ allowHalfOpen: false });
    const timer = setTimeout(() => this.fail(unavailable(`sandbox agent did not accept the connection within ${connectTimeoutMs} ms`)), connectTimeoutMs);
    this.sock.once('connect', () => {
      this.connected = true;
      clearTimeout(timer);
    });
    this.sock.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.fail(err instanceof ProtocolError ? protocolError(err.message) : (err as Error));
        return;
      }
      for (const f of frames) this.deliver(f);
    });
    this.sock.on('error', (err: NodeJS.ErrnoException) =>
      this.fail(unavailable(this.connected ? 'connection to the sandbox agent failed' : 'cannot connect to the sandbox agent', err)),
    );
    this.sock.on('close', () => {
      clearTimeout(timer);
      // Errors are only built when someone can see them: capturing a stack on every close costs real time per exec.
      if (!this.closedByUs || this.waiter) this.fail(unavailable('the sandbox agent closed the connection before answering'));
    });
  }

  private deliver(f: Frame) {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(f);
      return;
    }
    this.queue.push(f);
    this.queuedBytes += f.payload.length;
    if (this.queuedBytes > QUEUE_HIGH) this.sock.pause();
  }

  private fail(err: AgentError | Error) {
    // The first failure wins: a reset after the agent's ERROR frame must not mask it.
    this.error ??= err instanceof AgentError ? err : new AgentError('EUNAVAILABLE', err.message);
    if (!this.sock.destroyed) this.sock.destroy();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(this.error);
    }
  }

  /** The next frame; an ERROR frame is thrown as its AgentError. Queued frames come before a connection error. */
  async next(): Promise<Frame> {
    const f = this.queue.length ? this.take() : await this.wait();
    if (f.type === T.ERROR) throw errorOf(f);
    return f;
  }

  private take(): Frame {
    const f = this.queue.shift()!;
    this.queuedBytes -= f.payload.length;
    if (this.queuedBytes <= QUEUE_HIGH / 4 && this.sock.isPaused() && !this.sock.destroyed) this.sock.resume();
    return f;
  }

  private wait(): Promise<Frame> {
    if (this.error) return Promise.reject(this.error);
    if (this.sock.destroyed) return Promise.reject(unavailable('the connection to the sandbox agent is closed'));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Writes a frame (queued by the socket before it connects). False: wait for `drained()`. */
  send(type: number, payload: Buffer = Buffer.alloc(0)): boolean {
    if (this.sock.destroyed || this.sock.writableEnded) return false;
    const h = frameHeader(type, payload.length);
    if (payload.length <= COALESCE) return this.sock.write(payload.length ? Buffer.concat([h, payload]) : h);
    this.sock.write(h);
    return this.sock.write(payload);
  }

  /** True once the socket drained, false if the connection is gone. Never rejects. */
  drained(): Promise<boolean> {
    if (this.sock.destroyed) return Promise.resolve(false);
    if (!this.sock.writableNeedDrain) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => () => {
        this.sock.off('drain', onDrain);
        this.sock.off('close', onClose);
        resolve(ok);
      };
      const onDrain = done(true);
      const onClose = done(false);
      this.sock.once('drain', onDrain);
      this.sock.once('close', onClose);
    });
  }

  close() {
    this.closedByUs = true;
    if (!this.sock.destroyed) this.sock.destroy();
  }
}

function errorOf(f: Frame): AgentError {
  let r: AgentRecord;
  try {
    r = decodeRecord(f.payload);
  } catch {
    return protocolError('malformed ERROR record');
  }
  const code = r.get('code');
  return new AgentError(code && /^E[A-Z0-9]{1,30}$/.test(code) ? code : 'EIO', r.get('message') ?? 'sandbox agent error');
}

function num(r: AgentRecord, key: string, parse: (s: string) => number = Number): number {
  const v = r.get(key);
  const n = v === undefined || v === '' ? NaN : parse(v);
  if (!Number.isFinite(n)) throw protocolError(`invalid "${key}" in entry`);
  return n;
}

/**
 * An entry record. `path` comes from us, never from the agent: for LIST the
 * agent's name is only accepted as a single plain path component.
 */
function entryOf(f: Frame, path: string, listed: boolean): Entry {
  let r: AgentRecord;
  try {
    r = decodeRecord(f.payload);
  } catch (err) {
    throw protocolError((err as Error).message);
  }
  let name: string;
  if (listed) {
    name = r.get('name') ?? '';
    if (name === '' || name === '.' || name === '..' || name.includes('/')) throw protocolError(`invalid entry name ${JSON.stringify(name)}`);
  } else {
    name = posix.basename(path) || '/';
  }
  const type = r.get('type');
  const mode = r.get('mode') ?? '';
  if (!/^[0-7]{1,6}$/.test(mode)) throw protocolError('invalid "mode" in entry');
  const target = r.get('target');
  return {
    name,
    path: listed ? posix.join(path, name) : path,
    type: type === 'file' || type === 'dir' || type === 'symlink' ? type : 'other',
    size: num(r, 'size'),
    mode: parseInt(mode, 8) & 0o7777,
    mtime: new Date(num(r, 'mtime') * 1000),
    uid: num(r, 'uid'),
    gid: num(r, 'gid'),
    ...(target !== undefined ? { target } : {}),
  };
}

function expect(f: Frame, type: number, op: string): Frame {
  if (f.type !== type) throw protocolError(`unexpected frame ${hex(f.type)} in ${op}`);
  return f;
}

function encode(pairs: RecordPairs): Buffer {
  try {
    return encodeRecord(pairs);
  } catch (err) {
    throw new AgentError('EINVAL', (err as Error).message);
  }
}

const userPair = (user?: string): [string, string][] => (user !== undefined ? [['user', user]] : []);

async function* chunksOf(data: Buffer | string | AsyncIterable<Buffer | string> | Readable): AsyncIterable<Buffer> {
  if (typeof data === 'string' || Buffer.isBuffer(data)) {
    yield Buffer.from(data);
    return;
  }
  for await (const c of data as AsyncIterable<Buffer | string | Uint8Array>) yield Buffer.isBuffer(c) ? c : Buffer.from(c as string);
}

/**
 * What the control plane does inside one sandbox: exec, files and TCP dials to its own ports. The server uses
 * only this interface, so a backend may reach the agent another way (a pod's port-forward, say) than this
 * host's unix socket.
 */
export interface SandboxAgent {
  ping(timeoutMs?: number): Promise<void>;
  dial(port: number, opts?: DialOptions): Promise<Duplex>;
  exec(req: ExecRequest, handlers?: ExecHandlers): ExecHandle;
  readFile(path: string, opts?: UserOpt): AsyncIterable<Buffer>;
  writeFile(path: string, data: Buffer | string | AsyncIterable<Buffer> | Readable, opts?: UserOpt & { mode?: number; append?: boolean }): Promise<Entry>;
  list(path: string, opts?: UserOpt): Promise<Entry[]>;
  stat(path: string, opts?: UserOpt): Promise<Entry>;
  mkdir(path: string, opts?: UserOpt & { parents?: boolean; mode?: number }): Promise<Entry>;
  remove(path: string, opts?: UserOpt & { recursive?: boolean }): Promise<void>;
  rename(from: string, to: string, opts?: UserOpt): Promise<Entry>;
}

/**
 * Opens one connection to a sandbox's agent, emitting 'connect' once it can carry bytes: a unix socket on this
 * host, a stream of the pod's `moat-init --mux` channel on Kubernetes (AgentMux). `allowHalfOpen`: the stream's end() is a half-close.
 */
export type AgentTransport = (opts: { allowHalfOpen: boolean }) => Duplex;

/** Client of one sandbox's moat-init (docs/agent-protocol.md): one connection per operation. */
export class AgentClient implements SandboxAgent {
  private readonly connectTimeoutMs: number;
  private readonly maxListEntries: number;
  private readonly transport: AgentTransport;

  /** `target`: the agent's unix socket, or how to open a connection to it. */
  constructor(target: string | AgentTransport, opts: AgentClientOptions = {}) {
    this.transport = typeof target === 'string' ? ({ allowHalfOpen }) => connect({ path: target, allowHalfOpen }) : target;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5000;
    this.maxListEntries = opts.maxListEntries ?? 100_000;
  }

  /** Connects and sends the request at once (the socket queues it until connected: no extra round trip). */
  private open(type: number, pairs: RecordPairs): Conn {
    const payload = encode(pairs);
    const c = new Conn(this.transport, this.connectTimeoutMs);
    c.send(type, payload);
    return c;
  }

  /** Request → a single answer frame of `answer`. */
  private async single(type: number, pairs: RecordPairs, answer: number, op: string): Promise<Frame> {
    const c = this.open(type, pairs);
    try {
      return expect(await c.next(), answer, op);
    } finally {
      c.close();
    }
  }

  /** Resolves when the agent answers; ETIMEDOUT after `timeoutMs`, EUNAVAILABLE if it cannot be reached. */
  async ping(timeoutMs = 2000): Promise<void> {
    const c = this.open(T.PING, []);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        c.next().then((f) => expect(f, T.OK, 'PING')),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new AgentError('ETIMEDOUT', `sandbox agent did not answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      c.close();
    }
  }

  /**
   * Opens a TCP connection to `port` on the sandbox's own loopback, relayed
   * by the agent: the host needs no network path into the sandbox. Resolves
   * with a socket carrying the raw stream, usable as `createConnection` for
   * `http.request` or piped to a WebSocket upgrade; `end()` and EOF pass
   * through as half-closes. Rejects with the agent's code: ECONNREFUSED,
   * ETIMEDOUT, EINVAL (port out of range, non-loopback host)...
   */
  dial(port: number, opts: DialOptions = {}): Promise<Duplex> {
    if (!Number.isInteger(port)) return Promise.reject(new AgentError('EINVAL', `invalid port ${port}`));
    let req: Buffer;
    try {
      const payload = encode([['port', String(port)], ...(opts.host !== undefined ? [['host', opts.host] as const] : [])]);
      req = Buffer.concat([frameHeader(T.DIAL, payload.length), payload]);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const timeoutMs = opts.timeoutMs ?? 15_000;
    return new Promise((resolve, reject) => {
      const sock = this.transport({ allowHalfOpen: opts.allowHalfOpen ?? false });
      let connected = false;
      let header: { type: number; length: number } | null = null;
      const settle = (err: AgentError | null) => {
        clearTimeout(timer);
        sock.off('connect', onConnect).off('readable', onReadable).off('end', onEnd).off('close', onEnd).off('error', onError);
        if (!err) return resolve(sock);
        sock.destroy();
        reject(err);
      };
      // Reads exactly the answer frame: what follows is already the TCP stream and stays in the socket for the caller.
      const onReadable = () => {
        if (!header) {
          const h = sock.read(HEADER_SIZE) as Buffer | null;
          if (h === null) return;
          if (h.length < HEADER_SIZE) return settle(unavailable('the sandbox agent closed the connection before answering'));
          header = { type: h[0]!, length: h.readUInt32BE(1) };
          if (header.length > MAX_FRAME) return settle(protocolError(`frame of ${header.length} bytes exceeds the ${MAX_FRAME}-byte limit`));
        }
        const payload = header.length ? (sock.read(header.length) as Buffer | null) : Buffer.alloc(0);
        if (payload === null) return;
        if (payload.length < header.length) return settle(unavailable('the sandbox agent closed the connection before answering'));
        const f = { type: header.type, payload };
        if (f.type === T.ERROR) return settle(errorOf(f));
        if (f.type !== T.OK) return settle(protocolError(`unexpected frame ${hex(f.type)} in DIAL`));
        settle(null);
      };
      const onConnect = () => (connected = true);
      const onEnd = () => settle(unavailable('the sandbox agent closed the connection before answering'));
      const onError = (err: NodeJS.ErrnoException) =>
        settle(unavailable(connected ? 'connection to the sandbox agent failed' : 'cannot connect to the sandbox agent', err));
      const timer = setTimeout(
        () => settle(new AgentError('ETIMEDOUT', `port ${port} in the sandbox did not accept a connection within ${timeoutMs} ms`)),
        timeoutMs,
      );
      sock.on('connect', onConnect).on('readable', onReadable).on('end', onEnd).on('close', onEnd).on('error', onError);
      sock.write(req);
    });
  }

  exec(req: ExecRequest, handlers: ExecHandlers = {}): ExecHandle {
    let resolvePid!: (pid: number) => void;
    let rejectPid!: (e: Error) => void;
    let resolveDone!: (r: ExecExit) => void;
    let rejectDone!: (e: Error) => void;
    const pid = new Promise<number>((res, rej) => ((resolvePid = res), (rejectPid = rej)));
    const done = new Promise<ExecExit>((res, rej) => ((resolveDone = res), (rejectDone = rej)));
    // Callers often await only one of the two; the other must not become an unhandled rejection.
    pid.catch(() => {});
    done.catch(() => {});

    let c: Conn | null = null;
    let finished = false;
    let killed = false;
    const finish = (err: Error | null, result?: ExecExit) => {
      if (finished) return;
      finished = true;
      c?.close();
      if (err) {
        rejectPid(err);
        rejectDone(err);
      } else {
        resolveDone(result!);
      }
    };

    try {
      if (!Array.isArray(req.command) || req.command.length === 0) throw new AgentError('EINVAL', 'exec needs a command');
      const pairs: [string, string][] = req.command.map((a) => ['arg', a]);
      for (const [k, v] of Object.entries(req.env ?? {})) {
        if (!k || k.includes('=')) throw new AgentError('EINVAL', `invalid environment variable name ${JSON.stringify(k)}`);
        pairs.push(['env', `${k}=${v}`]);
      }
      if (req.cwd !== undefined) pairs.push(['cwd', req.cwd]);
      pairs.push(...userPair(req.user));
      if (req.tty) {
        pairs.push(['tty', '1']);
        if (req.rows) pairs.push(['rows', String(Math.trunc(req.rows))]);
        if (req.cols) pairs.push(['cols', String(Math.trunc(req.cols))]);
      }
      c = this.open(T.EXEC, pairs);
    } catch (err) {
      finish(err as Error);
    }

    const conn = c;
    if (conn) {
      void (async () => {
        let started = false;
        try {
          for (;;) {
            const f = await conn.next();
            if (f.type === T.STARTED && !started && f.payload.length === 4) {
              started = true;
              resolvePid(f.payload.readUInt32BE(0));
            } else if (f.type === T.STDOUT && started) {
              handlers.onStdout?.(f.payload);
            } else if (f.type === T.STDERR && started) {
              handlers.onStderr?.(f.payload);
            } else if (f.type === T.EXIT && started && f.payload.length === 8) {
              const code = f.payload.readInt32BE(0);
              const sig = f.payload.readInt32BE(4);
              if (sig < 0 || sig > 127) throw protocolError(`invalid signal ${sig} in EXIT`);
              return finish(null, sig ? { exitCode: 128 + sig, signal: sig } : { exitCode: code, signal: null });
            } else {
              throw protocolError(`unexpected frame ${hex(f.type)} in EXEC`);
            }
          }
        } catch (err) {
          finish(killed ? new AgentError('EKILLED', 'exec was cancelled: its processes were killed') : (err as Error));
        }
      })();
    }

    const send = (type: number, payload?: Buffer) => (!finished && conn ? conn.send(type, payload) : false);
    return {
      pid,
      done,
      writeStdin(b) {
        const buf = typeof b === 'string' ? Buffer.from(b) : b;
        let ok = true;
        for (let i = 0; i < buf.length; i += DATA_CHUNK) ok = send(T.DATA, buf.subarray(i, i + DATA_CHUNK));
        return ok;
      },
      async drain() {
        if (!finished && conn) await conn.drained();
      },
      closeStdin: () => void send(T.EOF),
      signal: (signo) => void send(T.SIGNAL, u32(signo)),
      resize: (rows, cols) => void send(T.RESIZE, resizePayload(rows, cols)),
      kill() {
        if (finished) return;
        killed = true;
        finish(new AgentError('EKILLED', 'exec was cancelled: its processes were killed'));
      },
    };
  }

  /**
   * File content, streamed in frames of at most 64 KiB. Nothing is sent
   * until iteration starts; the first `next()` surfaces errors such as
   * ENOENT or EISDIR. Stop iterating (or call `return()`) to abort.
   */
  readFile(path: string, opts: UserOpt = {}): AsyncIterable<Buffer> {
    const open = () => this.open(T.READ, [['path', path], ...userPair(opts.user)]);
    return {
      async *[Symbol.asyncIterator]() {
        const c = open();
        try {
          for (;;) {
            const f = await c.next();
            if (f.type === T.END) return;
            yield expect(f, T.STDOUT, 'READ').payload;
          }
        } finally {
          c.close();
        }
      },
    };
  }

  /**
   * Writes a file (creating missing parents). The data source is read only
   * as fast as the socket drains. If the agent refuses early (EACCES,
   * EISDIR...), sending stops and that error is thrown.
   */
  async writeFile(
    path: string,
    data: Buffer | string | AsyncIterable<Buffer> | Readable,
    opts: UserOpt & { mode?: number; append?: boolean } = {},
  ): Promise<Entry> {
    const pairs: [string, string][] = [['path', path], ...userPair(opts.user)];
    if (opts.mode !== undefined) pairs.push(['mode', (opts.mode & 0o7777).toString(8)]);
    if (opts.append) pairs.push(['append', '1']);
    const c = this.open(T.WRITE, pairs);
    // The only frame the agent sends is the answer; it can come early (an error) while we are still sending.
    const reply = c.next();
    let answered = false;
    reply.then(
      () => (answered = true),
      () => (answered = true),
    );
    try {
      sending: for await (const chunk of chunksOf(data)) {
        for (let i = 0; i < chunk.length; i += DATA_CHUNK) {
          if (answered) break sending;
          if (!c.send(T.DATA, chunk.subarray(i, i + DATA_CHUNK)) && !(await c.drained())) break sending;
        }
        if (answered) break;
      }
      if (!answered) c.send(T.EOF);
      return entryOf(expect(await reply, T.OK, 'WRITE'), path, false);
    } finally {
      c.close();
    }
  }

  /** Directory entries (without . and ..), in the agent's order. */
  async list(path: string, opts: UserOpt = {}): Promise<Entry[]> {
    const c = this.open(T.LIST, [['path', path], ...userPair(opts.user)]);
    try {
      const out: Entry[] = [];
      for (let f = await c.next(); f.type !== T.END; f = await c.next()) {
        if (out.length >= this.maxListEntries) throw new AgentError('E2BIG', `${path} has more than ${this.maxListEntries} entries`);
        out.push(entryOf(expect(f, T.ENTRY, 'LIST'), path, true));
      }
      return out;
    } finally {
      c.close();
    }
  }

  /** Does not follow a final symlink. */
  async stat(path: string, opts: UserOpt = {}): Promise<Entry> {
    return entryOf(await this.single(T.STAT, [['path', path], ...userPair(opts.user)], T.ENTRY, 'STAT'), path, false);
  }

  async mkdir(path: string, opts: UserOpt & { parents?: boolean; mode?: number } = {}): Promise<Entry> {
    const pairs: [string, string][] = [['path', path], ...userPair(opts.user)];
    if (opts.mode !== undefined) pairs.push(['mode', (opts.mode & 0o7777).toString(8)]);
    if (opts.parents) pairs.push(['parents', '1']);
    return entryOf(await this.single(T.MKDIR, pairs, T.OK, 'MKDIR'), path, false);
  }

  async remove(path: string, opts: UserOpt & { recursive?: boolean } = {}): Promise<void> {
    const pairs: [string, string][] = [['path', path], ...userPair(opts.user)];
    if (opts.recursive) pairs.push(['recursive', '1']);
    await this.single(T.REMOVE, pairs, T.OK, 'REMOVE');
  }

  /** Renames and returns the entry at `to`. */
  async rename(from: string, to: string, opts: UserOpt = {}): Promise<Entry> {
    const f = await this.single(T.RENAME, [['from', from], ['to', to], ...userPair(opts.user)], T.OK, 'RENAME');
    // moat-init includes the entry in its OK; an agent that answers with an empty OK costs a STAT.
    return f.payload.length ? entryOf(f, to, false) : this.stat(to, opts);
  }
}
