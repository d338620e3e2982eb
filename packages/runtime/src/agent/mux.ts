import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { FrameDecoder, M, MAX_FRAME, MUX_HEADER_SIZE, MUX_WINDOW, ProtocolError, encodeMuxFrame, u32, type MuxFrame } from './protocol.js';

/** Receive credit is granted back in batches of at least this much, so small reads do not each cost a WINDOW frame. */
const GRANT_BATCH = MUX_WINDOW / 4;

/**
 * The host's end of `moat-init --mux` (docs/agent-protocol.md, "Multiplexing"): many agent connections over one
 * byte stream, the channel (on Kubernetes, one pods/exec session per pod). Each MuxStream attached to it is one
 * connection, as a unix socket to the agent would be, so AgentClient works over it unchanged.
 *
 * Flow control is per stream: neither side ever has more than MUX_WINDOW bytes of a stream in flight, so the
 * channel is always read, and a stream whose reader stops only stops itself. The agent is not trusted: a frame
 * that breaks the protocol fails the channel with a ProtocolError.
 *
 * Events: 'idle' when the last stream left; 'close' (err) once the channel is gone, its streams destroyed.
 */
export class AgentMux extends EventEmitter {
  /** Resolves once the agent said it runs (HELLO); rejects with the channel's error if it ends before. */
  readonly ready: Promise<void>;
  private readonly streams = new Map<number, MuxStream>();
  private readonly decoder = new FrameDecoder(MAX_FRAME, MUX_HEADER_SIZE);
  private nextId = 1;
  private hello = false;
  private failure: Error | null = null;
  private resolveReady!: () => void;
  private rejectReady!: (err: Error) => void;

  constructor(private readonly channel: Duplex) {
    super();
    this.ready = new Promise((resolve, reject) => ((this.resolveReady = resolve), (this.rejectReady = reject)));
    this.ready.catch(() => {}); // who attaches streams hears of the failure through them
    channel.on('data', (chunk: Buffer) => this.onData(chunk));
    channel.on('error', (err: Error) => this.fail(err));
    channel.on('end', () => this.fail(new Error('the agent ended the channel')));
    channel.on('close', () => this.fail(new Error('the channel to the agent closed')));
  }

  /** Streams open on the channel. */
  get size(): number {
    return this.streams.size;
  }

  get closed(): boolean {
    return this.failure !== null;
  }

  /** Makes `stream` a new connection to the agent (OPEN), or destroys it with the channel's failure. */
  attach(stream: MuxStream): void {
    if (stream.destroyed) return;
    if (this.failure) return void stream.destroy(this.failure);
    const id = this.nextId++;
    this.streams.set(id, stream);
    this.send(M.OPEN, id);
    stream.attached(this, id);
  }

  /** Closes the channel; its streams end with `err`. */
  destroy(err: Error = new Error('the channel to the agent was closed')): void {
    this.fail(err);
  }

  /** @internal */
  send(type: number, id: number, payload?: Buffer): void {
    if (!this.failure) this.channel.write(encodeMuxFrame(type, id, payload));
  }

  /** @internal a stream is gone, on either side's CLOSE */
  forget(id: number): void {
    if (this.streams.delete(id) && this.streams.size === 0 && !this.failure) this.emit('idle');
  }

  private onData(chunk: Buffer) {
    let frames: MuxFrame[];
    try {
      frames = this.decoder.push(chunk) as MuxFrame[];
      for (const f of frames) this.onFrame(f);
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private onFrame(f: MuxFrame) {
    if (!this.hello) {
      if (f.type !== M.HELLO || f.stream !== 0) throw new ProtocolError(`the agent's first frame is 0x${f.type.toString(16)}, not HELLO`);
      this.hello = true;
      return this.resolveReady();
    }
    if (f.type === M.OPEN || f.type === M.HELLO || f.type < M.OPEN || f.type > M.HELLO)
      throw new ProtocolError(`unexpected mux frame 0x${f.type.toString(16)} from the agent`);
    const stream = this.streams.get(f.stream);
    if (!stream) {
      // A stream we closed may still get what the agent sent before our CLOSE reached it; never opened is a violation.
      if (f.stream > 0 && f.stream < this.nextId) return;
      throw new ProtocolError(`the agent sent a frame for stream ${f.stream}, which was never opened`);
    }
    if (f.type === M.DATA) stream.onData(f.payload);
    else if (f.type === M.EOF) stream.onEof();
    else if (f.type === M.CLOSE) stream.onClose(f.payload.toString('utf8'));
    else {
      if (f.payload.length !== 4) throw new ProtocolError(`WINDOW of ${f.payload.length} bytes, not 4`);
      stream.onWindow(f.payload.readUInt32BE(0));
    }
  }

  private fail(err: Error) {
    if (this.failure) return;
    this.failure = err;
    this.rejectReady(err);
    if (!this.channel.destroyed) this.channel.destroy();
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) s.destroy(new Error(`connection to the sandbox agent lost: ${err.message}`));
    this.emit('close', err);
  }
}

/**
 * One connection through an AgentMux, made before it is attached (bytes written meanwhile wait, as a socket's do
 * until it connects; 'connect' is emitted on attach). `end()` is a half-close (EOF), `destroy()` a CLOSE.
 */
export class MuxStream extends Duplex {
  private mux?: AgentMux;
  private id = 0;
  /** Bytes we may still send. */
  private credit = MUX_WINDOW;
  /** Bytes received, and the total the agent may send (its window), for the credit we grant back. */
  private received = 0;
  private granted = MUX_WINDOW;
  /** A write waiting for attach or for credit. */
  private blocked: { chunk: Buffer; cb: (err?: Error | null) => void } | null = null;
  private finalCb: (() => void) | null = null;
  private gotEof = false;
  /** The agent sent CLOSE: nothing more goes out. */
  private remoteClosed = false;

  constructor(opts: { allowHalfOpen: boolean }) {
    super({ allowHalfOpen: opts.allowHalfOpen });
  }

  /** @internal */
  attached(mux: AgentMux, id: number): void {
    this.mux = mux;
    this.id = id;
    process.nextTick(() => this.emit('connect')); // after whoever just made the stream listens
    this.flush();
  }

  /** @internal */
  onData(payload: Buffer): void {
    this.received += payload.length;
    if (this.received > this.granted) throw new ProtocolError(`the agent sent ${this.received - this.granted} bytes beyond stream ${this.id}'s window`);
    if (this.gotEof) throw new ProtocolError(`DATA after EOF on stream ${this.id}`);
    this.push(payload);
  }

  /** @internal */
  onEof(): void {
    this.gotEof = true;
    this.push(null);
  }

  /** @internal */
  onWindow(n: number): void {
    this.credit += n;
    this.flush();
  }

  /** @internal the agent closed the stream: after its EOF, the end of a finished connection; before, an abort. */
  onClose(reason: string): void {
    this.remoteClosed = true;
    this.mux!.forget(this.id);
    if (!this.gotEof) return void this.destroy(new Error(`the sandbox agent closed the connection${reason ? `: ${reason}` : ''}`));
    this.flush(); // writes still queued are dropped, as on a socket whose peer is gone
  }

  /** Sends what waits, within the credit. */
  private flush() {
    const mux = this.mux;
    if (!mux) return;
    const b = this.blocked;
    if (b) {
      if (this.remoteClosed) {
        this.blocked = null;
        return b.cb();
      }
      let chunk = b.chunk;
      while (chunk.length && this.credit > 0) {
        const n = Math.min(chunk.length, this.credit, MAX_FRAME);
        mux.send(M.DATA, this.id, chunk.subarray(0, n));
        this.credit -= n;
        chunk = chunk.subarray(n);
      }
      if (chunk.length) return void (b.chunk = chunk);
      this.blocked = null;
      b.cb();
    }
    if (this.finalCb && !this.blocked) {
      const cb = this.finalCb;
      this.finalCb = null;
      if (!this.remoteClosed) mux.send(M.EOF, this.id);
      cb();
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.blocked = { chunk, cb };
    this.flush();
  }

  override _final(cb: () => void): void {
    this.finalCb = cb;
    this.flush();
  }

  /** The consumer wants more: grant the agent credit for what it took, up to one window outstanding. */
  override _read(): void {
    if (!this.mux || this.remoteClosed) return;
    const grant = this.received - this.readableLength + MUX_WINDOW - this.granted;
    if (grant < GRANT_BATCH) return;
    this.granted += grant;
    this.mux.send(M.WINDOW, this.id, u32(grant));
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    if (this.mux && !this.remoteClosed) {
      this.remoteClosed = true;
      this.mux.send(M.CLOSE, this.id);
      this.mux.forget(this.id);
    }
    cb(err);
  }
}
