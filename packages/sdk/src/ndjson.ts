import { MoatError } from './errors.js';
import type { ExecEvent } from './types.js';

/**
 * Split a byte stream into JSON values, one per line. Chunks may end anywhere,
 * even inside a multi-byte character, so decoding is done in streaming mode
 * and only complete lines are parsed.
 */
export async function* parseNdjson(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<unknown> {
  const decoder = new TextDecoder('utf-8');
  let pending = '';
  for await (const chunk of chunks) {
    pending += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim()) yield parseLine(line);
    }
  }
  pending += decoder.decode();
  if (pending.trim()) yield parseLine(pending);
}

function parseLine(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    throw new MoatError(0, 'ProtocolError', `malformed line in the exec stream: ${line.slice(0, 200)}`);
  }
}

/** Turn one wire object of the exec stream into an ExecEvent (base64 output decoded). */
export function toExecEvent(raw: unknown): ExecEvent {
  const o = raw as Record<string, unknown>;
  switch (o?.type) {
    case 'started':
      return { type: 'started', pid: Number(o.pid) };
    case 'stdout':
    case 'stderr':
      return { type: o.type, data: Buffer.from(String(o.data ?? ''), 'base64') };
    case 'exit':
      return {
        type: 'exit',
        exitCode: Number(o.exitCode),
        signal: typeof o.signal === 'string' ? o.signal : null,
        timedOut: o.timedOut === true,
        durationMs: Number(o.durationMs ?? 0),
      };
    case 'error':
      return { type: 'error', reason: String(o.reason ?? 'Unknown'), message: String(o.message ?? 'exec failed') };
    default:
      throw new MoatError(0, 'ProtocolError', `unexpected event in the exec stream: ${JSON.stringify(raw).slice(0, 200)}`);
  }
}
