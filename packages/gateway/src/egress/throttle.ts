import { Transform, type TransformCallback } from 'node:stream';

/**
 * A token bucket in bytes that may go into debt: a chunk larger than what is
 * left passes after a wait proportional to the shortfall, so over any span t
 * at most burst + rate·t bytes pass, whatever the chunk sizes.
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();

  constructor(
    private rate: number,
    private burst = burstFor(rate),
  ) {
    this.tokens = this.burst;
  }

  setRate(rate: number): void {
    if (rate === this.rate) return;
    this.refill();
    this.rate = rate;
    this.burst = burstFor(rate);
    this.tokens = Math.min(this.tokens, this.burst);
  }

  /** Milliseconds to wait before sending n bytes. */
  take(n: number): number {
    this.refill();
    this.tokens -= n;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.rate) * 1000);
  }

  /** Whether forgetting the bucket would change nothing. */
  full(): boolean {
    this.refill();
    return this.tokens >= this.burst;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}

/** An eighth of a second's worth: smooth enough, and large enough for full socket reads. */
export const burstFor = (rate: number) => Math.max(16 * 1024, rate / 8);

/** Passes bytes through, counting them and pacing them by a bucket (none: unlimited). */
export class Meter extends Transform {
  bytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly bucket: TokenBucket | undefined) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    const wait = this.bucket ? this.bucket.take(chunk.length) : 0;
    if (wait <= 0) return cb(null, chunk);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      cb(null, chunk);
    }, wait);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    clearTimeout(this.timer);
    cb(err);
  }
}
