import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseNdjson, toExecEvent, MoatError } from '../src/index.js';

async function* chunks(...parts: (string | Uint8Array)[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield typeof p === 'string' ? new TextEncoder().encode(p) : p;
}

async function collect(it: AsyncIterable<unknown>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const v of it) out.push(v);
  return out;
}

test('lines split across chunks, blank lines and a final line without newline', async () => {
  const got = await collect(parseNdjson(chunks('{"a":', '1}\n\n{"b":2}\n{"c"', ':3}')));
  assert.deepEqual(got, [{ a: 1 }, { b: 2 }, { c: 3 }]);
});

test('a multi-byte character split between chunks survives', async () => {
  const bytes = new TextEncoder().encode('{"s":"é€"}\n');
  const got = await collect(parseNdjson(chunks(bytes.subarray(0, 7), bytes.subarray(7))));
  assert.deepEqual(got, [{ s: 'é€' }]);
});

test('a malformed line is a ProtocolError', async () => {
  await assert.rejects(collect(parseNdjson(chunks('{"ok":1}\nnot json\n'))), (err: unknown) => err instanceof MoatError && err.reason === 'ProtocolError');
});

test('exec events decode base64 output and normalise exit fields', () => {
  assert.deepEqual(toExecEvent({ type: 'started', pid: 12 }), { type: 'started', pid: 12 });
  const out = toExecEvent({ type: 'stdout', data: Buffer.from('hi\n').toString('base64') });
  assert.equal(out.type, 'stdout');
  assert.equal(out.type === 'stdout' && out.data.toString(), 'hi\n');
  assert.deepEqual(toExecEvent({ type: 'exit', exitCode: 137, signal: 'SIGKILL', timedOut: true, durationMs: 5 }), {
    type: 'exit',
    exitCode: 137,
    signal: 'SIGKILL',
    timedOut: true,
    durationMs: 5,
  });
  assert.deepEqual(toExecEvent({ type: 'error', reason: 'NotFound', message: 'nope' }), { type: 'error', reason: 'NotFound', message: 'nope' });
  assert.throws(() => toExecEvent({ type: 'weird' }), /unexpected event/);
});
