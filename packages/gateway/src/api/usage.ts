import { Transform, type TransformCallback } from 'node:stream';

export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
}

const FULL_JSON_LIMIT = 1 << 20;
const TAIL = 64 * 1024;

/** The first `usage` object in a parsed response or event, wherever it is nested. */
function findUsage(v: unknown, depth = 0): Record<string, unknown> | undefined {
  if (!v || typeof v !== 'object' || depth > 4) return undefined;
  const o = v as Record<string, unknown>;
  if (o.usage && typeof o.usage === 'object') return o.usage as Record<string, unknown>;
  for (const child of Object.values(o)) {
    const found = findUsage(child, depth + 1);
    if (found) return found;
  }
  return undefined;
}

const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/**
 * Passes a response through untouched while reading the token counts of
 * OpenAI (prompt/completion or input/output tokens, streamed when the
 * request asked for usage) and Anthropic (message_start, message_delta)
 * responses, JSON or server-sent events.
 */
export class UsageMeter extends Transform {
  readonly usage: TokenUsage = { inputTokens: 0, outputTokens: 0 };
  private line = '';
  private body: Buffer[] = [];
  private size = 0;

  constructor(private readonly sse: boolean) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    if (this.sse) {
      const lines = (this.line + chunk.toString('utf8')).split('\n');
      this.line = lines.pop()!.slice(-FULL_JSON_LIMIT);
      for (const l of lines) this.event(l);
    } else {
      this.body.push(chunk);
      this.size += chunk.length;
      // Past the limit only the tail is kept: usage comes last in a JSON answer.
      if (this.size > FULL_JSON_LIMIT) this.body = [Buffer.concat(this.body).subarray(-TAIL)];
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback) {
    if (this.sse) this.event(this.line);
    else this.json(Buffer.concat(this.body).toString('utf8'));
    cb();
  }

  private event(line: string) {
    if (!line.startsWith('data:') || !line.includes('usage')) return;
    try {
      this.count(findUsage(JSON.parse(line.slice(5))));
    } catch {
      /* not JSON ("[DONE]") */
    }
  }

  private json(text: string) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      // A tail of a large answer: the last usage object in it.
      const m = [...text.matchAll(/"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})/g)].pop();
      try {
        parsed = m && { usage: JSON.parse(m[1]!) };
      } catch {
        /* no usable usage: the call counts, its tokens do not */
      }
    }
    this.count(findUsage(parsed));
  }

  /** Streams report running totals: the largest seen is the count. */
  private count(u: Record<string, unknown> | undefined) {
    if (!u) return;
    this.usage.inputTokens = Math.max(this.usage.inputTokens, num(u.prompt_tokens) || num(u.input_tokens));
    this.usage.outputTokens = Math.max(this.usage.outputTokens, num(u.completion_tokens) || num(u.output_tokens));
  }
}
