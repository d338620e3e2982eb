import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, test } from 'node:test';
import { REDACTED, Redactor, UsageMeter } from '../src/index.js';

async function through(chunks: string[], t: NodeJS.ReadWriteStream): Promise<string[]> {
  const out: string[] = [];
  await pipeline(Readable.from(chunks.map((c) => Buffer.from(c))), t, async function* (src) {
    for await (const c of src) out.push(String(c));
  });
  return out;
}

describe('Redactor', () => {
  test('replaces a secret inside a chunk and across chunk boundaries', async () => {
    const out = await through(['token: sk-abc', 'def and again sk-', 'abcdef', ' end'], new Redactor(['sk-abcdef']));
    assert.equal(out.join(''), `token: ${REDACTED} and again ${REDACTED} end`);
  });

  test('holds back only what may start a secret: an SSE event flows on at once', async () => {
    const r = new Redactor(['sk-abcdef']);
    const seen: string[] = [];
    r.on('data', (c: Buffer) => seen.push(String(c)));
    r.write('data: {"x":1}\n\n');
    await new Promise((done) => setImmediate(done));
    assert.deepEqual(seen, ['data: {"x":1}\n\n']);
    r.write('data: sk-ab');
    await new Promise((done) => setImmediate(done));
    assert.deepEqual(seen.slice(1), ['data: '], 'the possible start of the secret waits');
    r.end('x');
    await new Promise((done) => r.on('end', done));
    assert.equal(seen.join(''), 'data: {"x":1}\n\ndata: sk-abx');
  });
});

describe('UsageMeter', () => {
  test('OpenAI JSON: prompt and completion tokens', async () => {
    const m = new UsageMeter(false);
    await through(['{"choices":[],"usage":{"prompt_tokens":', '12,"completion_tokens":3}}'], m);
    assert.deepEqual(m.usage, { inputTokens: 12, outputTokens: 3 });
  });

  test('Anthropic SSE: the largest running counts of message_start and message_delta', async () => {
    const m = new UsageMeter(true);
    const events = [
      'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":20,"output_tokens":1}}}\n\n',
      'event: message_delta\ndata: {"type":"message_del',
      'ta","usage":{"output_tokens":9}}\n\n',
    ];
    assert.equal((await through(events, m)).join(''), events.join(''), 'the stream itself is untouched');
    assert.deepEqual(m.usage, { inputTokens: 20, outputTokens: 9 });
  });

  test('a large answer: usage found in its tail', async () => {
    const m = new UsageMeter(false);
    const big = JSON.stringify({ data: [{ embedding: Array.from({ length: 200_000 }, () => 0.5) }], usage: { prompt_tokens: 7, total_tokens: 7 } });
    await through(big.match(/[\s\S]{1,65536}/g)!, m);
    assert.deepEqual(m.usage, { inputTokens: 7, outputTokens: 0 });
  });
});
