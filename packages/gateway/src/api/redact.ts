import { Transform, type TransformCallback } from 'node:stream';

export const REDACTED = '[redacted by moat]';

/** Longest suffix of `buf` that is a proper prefix of one of `needles`: it may become a match with the next chunk. */
function partialMatchAtEnd(buf: Buffer, needles: Buffer[]): number {
  let keep = 0;
  for (const n of needles) {
    for (let len = Math.min(n.length - 1, buf.length); len > keep; len--) {
      if (buf.subarray(buf.length - len).equals(n.subarray(0, len))) {
        keep = len;
        break;
      }
    }
  }
  return keep;
}

export function redact(buf: Buffer, needles: Buffer[]): Buffer {
  for (const n of needles) {
    let at = buf.indexOf(n);
    if (at < 0) continue;
    const parts: Buffer[] = [];
    let from = 0;
    for (; at >= 0; at = buf.indexOf(n, from)) {
      parts.push(buf.subarray(from, at), Buffer.from(REDACTED));
      from = at + n.length;
    }
    parts.push(buf.subarray(from));
    buf = Buffer.concat(parts);
  }
  return buf;
}

/**
 * Replaces every occurrence of the given secrets in a stream, also across
 * chunk boundaries. It holds back only a tail that could still start a
 * secret, so event streams flow on at once (an SSE event ends in "\n\n",
 * which starts no secret).
 */
export class Redactor extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  private readonly needles: Buffer[];

  constructor(secrets: string[]) {
    super();
    this.needles = [...new Set(secrets.filter((s) => s.length > 0))].map((s) => Buffer.from(s));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    const buf = redact(Buffer.concat([this.pending, chunk]), this.needles);
    const keep = partialMatchAtEnd(buf, this.needles);
    this.pending = buf.subarray(buf.length - keep);
    if (buf.length > keep) this.push(buf.subarray(0, buf.length - keep));
    cb();
  }

  override _flush(cb: TransformCallback) {
    if (this.pending.length) this.push(redact(this.pending, this.needles));
    cb();
  }
}

/** A header or message with the secrets replaced. */
export const redactText = (text: string, secrets: string[]) =>
  redact(
    Buffer.from(text),
    secrets.filter(Boolean).map((s) => Buffer.from(s)),
  ).toString();
