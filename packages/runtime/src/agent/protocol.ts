/** Frame types of the moat-init protocol (docs/agent-protocol.md). */
export const T = {
  EXEC: 0x01,
  READ: 0x02,
  WRITE: 0x03,
  LIST: 0x04,
  STAT: 0x05,
  MKDIR: 0x06,
  REMOVE: 0x07,
  RENAME: 0x08,
  PING: 0x09,
  DATA: 0x10,
  EOF: 0x11,
  SIGNAL: 0x12,
  RESIZE: 0x13,
  STARTED: 0x20,
  STDOUT: 0x21,
  STDERR: 0x22,
  EXIT: 0x23,
  END: 0x24,
  OK: 0x25,
  ENTRY: 0x26,
  ERROR: 0x2f,
} as const;

export const MAX_FRAME = 1024 * 1024;
const HEADER = 5;

export interface Frame {
  type: number;
  payload: Buffer;
}

export function encodeFrame(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_FRAME) throw new RangeError(`frame of ${payload.length} bytes exceeds ${MAX_FRAME}`);
  const h = Buffer.allocUnsafe(HEADER);
  h[0] = type;
  h.writeUInt32BE(payload.length, 1);
  return Buffer.concat([h, payload]);
}

export type RecordFields = [string, string | number | boolean | undefined][];

/** `key=value\0` records; repeated keys keep their order. Values must not contain NUL. */
export function encodeRecord(fields: RecordFields): Buffer {
  const parts: string[] = [];
  for (const [k, v] of fields) {
    if (v === undefined) continue;
    const s = typeof v === 'boolean' ? (v ? '1' : '0') : String(v);
    if (s.includes('\0') || k.includes('\0')) throw new RangeError(`field ${k} contains a NUL byte`);
    parts.push(`${k}=${s}\0`);
  }
  return Buffer.from(parts.join(''));
}

export function decodeRecord(payload: Buffer): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of payload.toString('utf8').split('\0')) {
    if (!part) continue;
    const i = part.indexOf('=');
    if (i > 0) m.set(part.slice(0, i), part.slice(i + 1));
  }
  return m;
}

/** Splits a byte stream into frames; an oversized frame is a protocol error (the agent is not trusted). */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: Frame[] = [];
    while (this.buf.length >= HEADER) {
      const len = this.buf.readUInt32BE(1);
      if (len > MAX_FRAME) throw new RangeError(`agent sent a frame of ${len} bytes (limit ${MAX_FRAME})`);
      if (this.buf.length < HEADER + len) break;
      frames.push({ type: this.buf[0]!, payload: this.buf.subarray(HEADER, HEADER + len) });
      this.buf = this.buf.subarray(HEADER + len);
    }
    return frames;
  }
}
