import assert from 'node:assert/strict';
import { test } from 'node:test';
import { errorFromResponse, MoatError, Moat } from '../src/index.js';

test('a Status body becomes a MoatError with the server message, reason and details', () => {
  const body = JSON.stringify({
    kind: 'Status',
    apiVersion: 'v1',
    status: 'Failure',
    code: 404,
    reason: 'NotFound',
    message: 'sandbox "foo" not found in namespace "default"',
    details: { name: 'foo', kind: 'sandboxes' },
  });
  const err = errorFromResponse(404, body, 'GET /x');
  assert.ok(err instanceof MoatError);
  assert.equal(err.status, 404);
  assert.equal(err.reason, 'NotFound');
  assert.equal(err.message, 'sandbox "foo" not found in namespace "default"');
  assert.deepEqual(err.details, { name: 'foo', kind: 'sandboxes' });
});

test("MoatError has the shape of the server's Status (code, reason, message, details); status is the old name of code", () => {
  const err = new MoatError(409, 'Conflict', 'busy', { kind: 'sandboxes' });
  assert.deepEqual(
    { code: err.code, reason: err.reason, message: err.message, details: err.details },
    { code: 409, reason: 'Conflict', message: 'busy', details: { kind: 'sandboxes' } },
  );
  assert.equal(err.status, 409);
});

test('a non-Status body still yields a readable error', () => {
  const err = errorFromResponse(502, '<html>Bad Gateway</html>', 'GET /healthz');
  assert.equal(err.status, 502);
  assert.equal(err.reason, 'BadGateway');
  assert.match(err.message, /GET \/healthz: HTTP 502: <html>Bad Gateway/);
});

test('a Status without a message falls back to the HTTP status', () => {
  const err = errorFromResponse(401, '{"kind":"Status","reason":"Unauthorized"}', 'GET /x');
  assert.equal(err.reason, 'Unauthorized');
  assert.match(err.message, /401/);
});

test('connection refused names the URL and suggests moat up', async () => {
  const moat = new Moat({ url: 'http://127.0.0.1:1', apiKey: 'k' });
  await assert.rejects(moat.images.list(), (err: unknown) => {
    assert.ok(err instanceof MoatError);
    assert.equal(err.status, 0);
    assert.equal(err.reason, 'Unavailable');
    assert.match(err.message, /http:\/\/127\.0\.0\.1:1/);
    assert.match(err.message, /moat up/);
    return true;
  });
});

test('a hung server hits the client timeout', async () => {
  // AbortSignal.timeout() does not keep the event loop alive (a real socket would): hold it open.
  const hang: typeof fetch = (_url, init) =>
    new Promise((_resolve, reject) => {
      const keepAlive = setTimeout(() => {}, 5000);
      init?.signal?.addEventListener('abort', () => {
        clearTimeout(keepAlive);
        reject(init.signal!.reason);
      });
    });
  const moat = new Moat({ url: 'http://moat.test', apiKey: 'k', fetch: hang, timeoutMs: 50 });
  await assert.rejects(moat.health(), (err: unknown) => err instanceof MoatError && err.reason === 'Timeout' && /timed out/.test(err.message));
});

test('an invalid URL is refused up front', () => {
  assert.throws(() => new Moat({ url: 'not a url' }), /invalid Moat server URL/);
});
