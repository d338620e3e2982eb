/**
 * The moat-init wire protocol (docs/agent-protocol.md): frames of
 * `u8 type, u32 length (BE), payload`, and records of `key=value\0` strings.
 *
 * The agent runs inside the sandbox and is not trusted: everything decoded
 * here is bounded (frame size) and validated before use.
 *
 * The numbers are the agent's, from packages/agent/src/protocol.h;
 * test/agent-protocol.test.ts fails unless the two agree.
 */

/** Largest payload either side may send. */
export const MAX_FRAME = 1024 * 1024;
export const HEADER_SIZE = 5;

export const FrameType = {
  // host → agent: requests (first frame of a connection)
  EXEC: 0x01,
  READ: 0x02,
  WRITE: 0x03,
  LIST: 0x04,
  STAT: 0x05,
  MKDIR: 0x06,
  REMOVE: 0x07,
  RENAME: 0x08,
  PING: 0x09,
  /** After its OK the connection is no longer framed: it carries the raw TCP stream. */
  DIAL: 0x0a,
  // host → agent: after the request
  DATA: 0x10,
  EOF: 0x11,
  SIGNAL: 0x12,
  RESIZE: 0x13,
  // agent → host
  STARTED: 0x20,
  STDOUT: 0x21,
  STDERR: 0x22,
  EXIT: 0x23,
  END: 0x24,
  OK: 0x25,
  ENTRY: 0x26,
  ERROR: 0x2f,
} as const;
export type FrameTypeName = keyof typeof FrameType;
/** Short alias. */
export const T = FrameType;

/**
 * `moat-init --mux`: many connections over one byte stream. A mux frame is `u8 type, u32 stream id (BE), u32
 * length (BE), payload` (at most MAX_FRAME); each direction of a stream starts with MUX_WINDOW bytes of credit.
 */
export const MUX_HEADER_SIZE = 9;
export const MUX_WINDOW = 256 * 1024;
export const MUX_MAX_STREAMS = 1024;

export const MuxFrameType = {
  /** host → agent: a new stream (ids increase), served by its own handler. */
  OPEN: 0x01,
  /** Bytes of the stream's connection, within the receiver's window. */
  DATA: 0x02,
  /** The sender's direction of the stream is done (a half-close). */
  EOF: 0x03,
  /** The stream is gone; from the agent, the payload may say why (a refused OPEN, say). */
  CLOSE: 0x04,
  /** u32: how many more bytes the receiver takes. */
  WINDOW: 0x05,
  /** agent → host, first, on stream 0: the agent runs. */
  HELLO: 0x06,
} as const;
/** Short alias. */
export const M = MuxFrameType;

export interface Frame {
  type: number;
  payload: Buffer;
}

/** A mux frame names its stream. */
export interface MuxFrame extends Frame {
  stream: number;
}

/** A protocol violation by the other side (bad framing or record). */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export function frameHeader(type: number, length: number): Buffer {
  if (length > MAX_FRAME) throw new RangeError(`frame payload of ${length} bytes exceeds ${MAX_FRAME}`);
  const h = Buffer.allocUnsafe(HEADER_SIZE);
  h[0] = type;
  h.writeUInt32BE(length, 1);
  return h;
}

export function encodeFrame(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([frameHeader(type, payload.length), payload]);
}

export function encodeMuxFrame(type: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_FRAME) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_FRAME}`);
  const f = Buffer.allocUnsafe(MUX_HEADER_SIZE + payload.length);
  f[0] = type;
  f.writeUInt32BE(stream, 1);
  f.writeUInt32BE(payload.length, 5);
  payload.copy(f, MUX_HEADER_SIZE);
  return f;
}

/** Ordered key/value pairs; keys may repeat (`arg`, `env`). */
export type RecordPairs = ReadonlyArray<readonly [string, string]>;

export function encodeRecord(pairs: RecordPairs): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of pairs) {
    if (!k || k.includes('=') || k.includes('\0')) throw new TypeError(`invalid record key ${JSON.stringify(k)}`);
    if (v.includes('\0')) throw new TypeError(`value of "${k}" contains a NUL byte`);
    parts.push(Buffer.from(`${k}=${v}\0`, 'utf8'));
  }
  return Buffer.concat(parts);
}

/** Parsed record: `get` returns the last value of a key, `all` every value in order. */
export class AgentRecord {
  constructor(readonly pairs: ReadonlyArray<readonly [string, string]>) {}
  get(key: string): string | undefined {
    for (let i = this.pairs.length - 1; i >= 0; i--) if (this.pairs[i][0] === key) return this.pairs[i][1];
    return undefined;
  }
  has(key: string): boolean {
    return this.pairs.some(([k]) => k === key);
  }
  all(key: string): string[] {
    return this.pairs.filter(([k]) => k === key).map(([, v]) => v);
  }
  get size(): number {
    return this.pairs.length;
  }
}

export function decodeRecord(payload: Buffer): AgentRecord {
  const pairs: [string, string][] = [];
  if (payload.length === 0) return new AgentRecord(pairs);
  if (payload[payload.length - 1] !== 0) throw new ProtocolError('record does not end with NUL');
  let start = 0;
  while (start < payload.length) {
    const end = payload.indexOf(0, start);
    const eq = payload.indexOf(0x3d /* = */, start);
    if (eq < 0 || eq >= end || eq === start) throw new ProtocolError('malformed record entry');
    pairs.push([payload.toString('utf8', start, eq), payload.toString('utf8', eq + 1, end)]);
    start = end + 1;
  }
  return new AgentRecord(pairs);
}

/**
 * Incremental frame decoder. Feed it socket chunks with `push`; it returns
 * the frames completed so far. Holds at most one partial frame (≤ 1 MiB +
 * header) and never concatenates more than that. With MUX_HEADER_SIZE it
 * decodes mux frames (MuxFrame: each with its stream).
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Header of the frame being assembled, once known. */
  private pending: { type: number; stream: number; length: number } | null = null;

  constructor(
    private readonly maxFrame = MAX_FRAME,
    private readonly headerSize: typeof HEADER_SIZE | typeof MUX_HEADER_SIZE = HEADER_SIZE,
  ) {}

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    for (;;) {
      if (!this.pending) {
        if (this.buffered < this.headerSize) break;
        const h = this.take(this.headerSize);
        const length = h.readUInt32BE(this.headerSize - 4);
        if (length > this.maxFrame) throw new ProtocolError(`frame of ${length} bytes exceeds the ${this.maxFrame}-byte limit`);
        this.pending = { type: h[0], stream: this.headerSize === MUX_HEADER_SIZE ? h.readUInt32BE(1) : 0, length };
      }
      if (this.buffered < this.pending.length) break;
      const { type, stream, length } = this.pending;
      const payload = this.take(length);
      frames.push(this.headerSize === MUX_HEADER_SIZE ? ({ type, stream, payload } as MuxFrame) : { type, payload });
      this.pending = null;
    }
    return frames;
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length === n) {
      this.chunks.shift();
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function resizePayload(rows: number, cols: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt16BE(clamp16(rows), 0);
  b.writeUInt16BE(clamp16(cols), 2);
  return b;
}

function clamp16(n: number): number {
  return Math.max(0, Math.min(0xffff, Math.trunc(n) || 0));
}
