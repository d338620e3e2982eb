import { connect, type Socket } from 'node:net';
import { posix } from 'node:path';
import { Readable } from 'node:stream';
import { FrameDecoder, T, decodeRecord, encodeFrame, encodeRecord, type Frame, type RecordFields } from './protocol.js';

export class AgentError extends Error {
  constructor(
    /** errno name from the agent (ENOENT, EISDIR...), EPROTO for a protocol violation, EUNAVAILABLE when it cannot be reached. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}

export interface Entry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
  target?: string;
}

export interface ExecRequest {
  command: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  tty?: boolean;
  rows?: number;
  cols?: number;
}

export interface ExecHandle {
  pid: Promise<number>;
  done: Promise<{ exitCode: number; signal: number | null }>;
  writeStdin(b: Buffer | string): void;
  closeStdin(): void;
  signal(signo: number): void;
  resize(rows: number, cols: number): void;
  /** Drop the connection: the agent SIGKILLs the process group. */
  kill(): void;
}

type UserOpt = { user?: string };
const STREAM_CHUNK = 256 * 1024;

/** Pulls frames one at a time, pausing the socket while the consumer is behind. */
class Conn {
  private queue: Frame[] = [];
  private waiting?: (f: Frame | null) => void;
  private ended = false;
  private error?: Error;
  private readonly decoder = new FrameDecoder();

  constructor(readonly sock: Socket) {
    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.fail(new AgentError('EPROTO', (err as Error).message));
        return;
      }
      for (const f of frames) this.deliver(f);
      if (this.queue.length > 16) sock.pause();
    });
    sock.on('error', (err: NodeJS.ErrnoException) => this.fail(new AgentError('EUNAVAILABLE', `sandbox agent unreachable: ${err.code ?? err.message}`)));
    sock.on('close', () => {
      this.ended = true;
      this.deliver(null);
    });
  }

  private deliver(f: Frame | null) {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w(f);
    } else if (f) this.queue.push(f);
  }

  private fail(err: Error) {
    this.error ??= err;
    this.sock.destroy();
    this.deliver(null);
  }

  async next(): Promise<Frame> {
    const f = this.queue.shift() ?? (this.ended || this.error ? null : await new Promise<Frame | null>((r) => (this.waiting = r)));
    if (this.queue.length < 4) this.sock.resume();
    if (!f) throw this.error ?? new AgentError('EPROTO', 'the sandbox agent closed the connection early');
    if (f.type === T.ERROR) throw errorOf(f);
    return f;
  }

  send(type: number, payload?: Buffer): boolean {
    return this.sock.write(encodeFrame(type, payload));
  }

  close() {
    this.sock.destroy();
  }
}

function errorOf(f: Frame): AgentError {
  const r = decodeRecord(f.payload);
  return new AgentError(r.get('code') ?? 'EIO', r.get('message') ?? 'agent error');
}

function entryOf(f: Frame, parent: string | null, requested?: string): Entry {
  if (f.type !== T.ENTRY && f.type !== T.OK) throw new AgentError('EPROTO', `unexpected frame 0x${f.type.toString(16)}`);
  const r = decodeRecord(f.payload);
  const name = r.get('name') ?? '';
  // The name is the agent's word: only a plain name may be joined to a path we chose.
  if (parent !== null && (name === '' || name === '.' || name === '..' || name.includes('/'))) {
    throw new AgentError('EPROTO', `agent sent an invalid entry name ${JSON.stringify(name)}`);
  }
  const type = r.get('type');
  return {
    name: parent === null ? posix.basename(requested ?? name) || '/' : name,
    path: parent === null ? (requested ?? name) : posix.join(parent, name),
    type: type === 'file' || type === 'dir' || type === 'symlink' ? type : 'other',
    size: Number(r.get('size') ?? 0),
    mode: parseInt(r.get('mode') ?? '0', 8),
    mtime: new Date(Number(r.get('mtime') ?? 0) * 1000),
    uid: Number(r.get('uid') ?? 0),
    gid: Number(r.get('gid') ?? 0),
    ...(r.has('target') ? { target: r.get('target')! } : {}),
  };
}

/** Client of one sandbox's moat-init: one unix-socket connection per operation. */
export class AgentClient {
  constructor(readonly socketPath: string) {}

  private open(type: number, fields: RecordFields): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const sock = connect(this.socketPath);
      sock.once('connect', () => {
        sock.off('error', onError);
        const c = new Conn(sock);
        c.send(type, encodeRecord(fields));
        resolve(c);
      });
      const onError = (err: NodeJS.ErrnoException) => reject(new AgentError('EUNAVAILABLE', `sandbox agent unreachable: ${err.code ?? err.message}`));
      sock.once('error', onError);
    });
  }

  private async simple(type: number, fields: RecordFields): Promise<Frame> {
    const c = await this.open(type, fields);
    try {
      return await c.next();
    } finally {
      c.close();
    }
  }

  async ping(timeoutMs = 2000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.simple(T.PING, []),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new AgentError('ETIMEDOUT', 'agent did not answer ping')), timeoutMs))),
    ]).finally(() => clearTimeout(timer));
  }

  exec(req: ExecRequest, handlers: { onStdout?(b: Buffer): void; onStderr?(b: Buffer): void } = {}): ExecHandle {
    const fields: RecordFields = req.command.map((a) => ['arg', a]);
    for (const [k, v] of Object.entries(req.env ?? {})) fields.push(['env', `${k}=${v}`]);
    fields.push(['cwd', req.cwd], ['user', req.user], ['tty', !!req.tty], ['rows', req.rows], ['cols', req.cols]);

    let sock: Socket | undefined;
    const pending: Buffer[] = [];
    const send = (type: number, payload?: Buffer) => {
      const frame = encodeFrame(type, payload);
      if (sock) sock.write(frame);
      else pending.push(frame);
    };
    let resolvePid!: (pid: number) => void;
    let rejectPid!: (e: Error) => void;
    const pid = new Promise<number>((res, rej) => ((resolvePid = res), (rejectPid = rej)));
    pid.catch(() => {});
    let killed = false;

    const done = new Promise<{ exitCode: number; signal: number | null }>((resolve, reject) => {
      const fail = (e: Error) => {
        rejectPid(e);
        reject(e);
      };
      const s = connect(this.socketPath);
      s.setNoDelay?.(true);
      const decoder = new FrameDecoder();
      let finished = false;
      s.once('connect', () => {
        sock = s;
        s.write(encodeFrame(T.EXEC, encodeRecord(fields)));
        for (const f of pending.splice(0)) s.write(f);
        if (killed) s.destroy();
      });
      s.on('data', (chunk: Buffer) => {
        let frames: Frame[];
        try {
          frames = decoder.push(chunk);
        } catch (err) {
          s.destroy();
          return fail(new AgentError('EPROTO', (err as Error).message));
        }
        for (const f of frames) {
          if (f.type === T.STARTED) resolvePid(f.payload.length >= 4 ? f.payload.readUInt32BE(0) : 0);
          else if (f.type === T.STDOUT) handlers.onStdout?.(f.payload);
          else if (f.type === T.STDERR) handlers.onStderr?.(f.payload);
          else if (f.type === T.EXIT && f.payload.length >= 8) {
            finished = true;
            const code = f.payload.readInt32BE(0);
            const sig = f.payload.readInt32BE(4);
            s.end();
            resolve(sig ? { exitCode: 128 + sig, signal: sig } : { exitCode: code, signal: null });
          } else if (f.type === T.ERROR) {
            finished = true;
            s.destroy();
            fail(errorOf(f));
          }
        }
      });
      s.on('error', (err: NodeJS.ErrnoException) => {
        if (!finished) fail(new AgentError('EUNAVAILABLE', `sandbox agent unreachable: ${err.code ?? err.message}`));
      });
      s.on('close', () => {
        if (!finished) fail(new AgentError(killed ? 'EKILLED' : 'EPROTO', killed ? 'exec was cancelled' : 'the sandbox agent closed the connection before the command exited'));
      });
    });
    done.catch(() => {});

    return {
      pid,
      done,
      writeStdin: (b) => {
        const buf = typeof b === 'string' ? Buffer.from(b) : b;
        for (let i = 0; i < buf.length; i += STREAM_CHUNK) send(T.DATA, buf.subarray(i, i + STREAM_CHUNK));
      },
      closeStdin: () => send(T.EOF),
      signal: (signo) => {
        const p = Buffer.alloc(4);
        p.writeUInt32BE(signo);
        send(T.SIGNAL, p);
      },
      resize: (rows, cols) => {
        const p = Buffer.alloc(4);
        p.writeUInt16BE(rows, 0);
        p.writeUInt16BE(cols, 2);
        send(T.RESIZE, p);
      },
      kill: () => {
        killed = true;
        sock?.destroy();
      },
    };
  }

  /** File content as a stream; the first read surfaces errors such as ENOENT. */
  readFile(path: string, opts: UserOpt = {}): AsyncIterable<Buffer> {
    const open = () => this.open(T.READ, [['path', path], ['user', opts.user]]);
    return {
      async *[Symbol.asyncIterator]() {
        const c = await open();
        try {
          for (;;) {
            const f = await c.next();
            if (f.type === T.END) return;
            if (f.type !== T.STDOUT) throw new AgentError('EPROTO', `unexpected frame 0x${f.type.toString(16)} in READ`);
            yield f.payload;
          }
        } finally {
          c.close();
        }
      },
    };
  }

  async writeFile(path: string, data: Buffer | string | AsyncIterable<Buffer> | Readable, opts: UserOpt & { mode?: number; append?: boolean } = {}): Promise<Entry> {
    const c = await this.open(T.WRITE, [['path', path], ['mode', (opts.mode ?? 0o644).toString(8)], ['user', opts.user], ['append', !!opts.append]]);
    // An early ERROR (e.g. EACCES) arrives while we are still sending: watch for it.
    const reply = c.next();
    reply.catch(() => {});
    let early: unknown;
    reply.then(() => {}, (e) => (early = e));
    try {
      const chunks: AsyncIterable<Buffer> | Buffer[] =
        typeof data === 'string' ? [Buffer.from(data)] : Buffer.isBuffer(data) ? [data] : (data as AsyncIterable<Buffer>);
      for await (const chunk of chunks) {
        if (early) break;
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
        for (let i = 0; i < buf.length; i += STREAM_CHUNK) {
          if (!c.send(T.DATA, buf.subarray(i, i + STREAM_CHUNK))) await new Promise((r) => c.sock.once('drain', r));
        }
      }
      if (!early) c.send(T.EOF);
      return entryOf(await reply, null, path);
    } finally {
      c.close();
    }
  }

  async list(path: string, opts: UserOpt = {}): Promise<Entry[]> {
    const c = await this.open(T.LIST, [['path', path], ['user', opts.user]]);
    try {
      const out: Entry[] = [];
      for (let f = await c.next(); f.type !== T.END; f = await c.next()) out.push(entryOf(f, path));
      return out;
    } finally {
      c.close();
    }
  }

  async stat(path: string, opts: UserOpt = {}): Promise<Entry> {
    return entryOf(await this.simple(T.STAT, [['path', path], ['user', opts.user]]), null, path);
  }

  async mkdir(path: string, opts: UserOpt & { parents?: boolean; mode?: number } = {}): Promise<Entry> {
    return entryOf(
      await this.simple(T.MKDIR, [['path', path], ['mode', (opts.mode ?? 0o755).toString(8)], ['parents', !!opts.parents], ['user', opts.user]]),
      null,
      path,
    );
  }

  async remove(path: string, opts: UserOpt & { recursive?: boolean } = {}): Promise<void> {
    await this.simple(T.REMOVE, [['path', path], ['recursive', !!opts.recursive], ['user', opts.user]]);
  }

  async rename(from: string, to: string, opts: UserOpt = {}): Promise<Entry> {
    await this.simple(T.RENAME, [['from', from], ['to', to], ['user', opts.user]]);
    return this.stat(to, opts);
  }
}
