import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { WebSocketServer, type WebSocket } from 'ws';
import { ExecError, Moat, MoatError } from '../src/index.js';

// A stand-in for the server's WebSocket exec endpoint: echoes stdin back as
// stdout until EOF, reports resizes and signals on stderr, then exits.
let server: Server;
let url: string;
const requests: unknown[] = [];

before(async () => {
  const wss = new WebSocketServer({ noServer: true });
  server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        apiVersion: 'agents.x-k8s.io/v1alpha1',
        kind: 'Sandbox',
        metadata: { name: req.url!.split('/').at(-1), namespace: 'default' },
        spec: {},
      }),
    );
  });
  server.on('upgrade', (req, socket, head) => {
    if (req.headers.authorization !== 'Bearer k' || !req.url!.includes('/sandboxes/ok/exec/ws')) {
      const body = JSON.stringify({ kind: 'Status', code: 404, reason: 'NotFound', message: 'sandbox "missing" not found' });
      socket.end(`HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      let first = true;
      ws.on('message', (data: Buffer, isBinary) => {
        if (first) {
          first = false;
          const request = JSON.parse(data.toString());
          requests.push(request);
          if (request.command[0] === 'missing') {
            ws.send(JSON.stringify({ type: 'error', reason: 'NotFound', message: 'missing: not found' }));
            return ws.close();
          }
          return ws.send(JSON.stringify({ type: 'started', pid: 7 }));
        }
        if (isBinary && data[0] === 0x00) return ws.send(Buffer.concat([Buffer.from([0x01]), data.subarray(1)]));
        if (isBinary && data[0] === 0x01) {
          ws.send(JSON.stringify({ type: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 }));
          return ws.close();
        }
        const msg = JSON.parse(data.toString());
        if (msg.type === 'resize') ws.send(Buffer.concat([Buffer.from([0x02]), Buffer.from(`resize ${msg.rows}x${msg.cols}\n`)]));
        if (msg.type === 'signal') {
          ws.send(JSON.stringify({ type: 'exit', exitCode: 130, signal: msg.signal, timedOut: false, durationMs: 1 }));
          ws.close();
        }
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => server.close());

test('spawn sends the request, stdin and resizes, and collects output', async () => {
  const sbx = await new Moat({ url, apiKey: 'k' }).sandboxes.get('ok');
  const seen: Buffer[] = [];
  const proc = sbx.spawn(['cat'], { tty: true, rows: 24, cols: 80, env: { A: 'b' }, onStdout: (b) => seen.push(b) });
  proc.write('hello '); // queued until the socket opens
  proc.resize(30, 100);
  proc.write(Buffer.from('world'));
  proc.end();
  const res = await proc.wait();
  assert.equal(res.exitCode, 0);
  assert.equal(res.stdout, 'hello world');
  assert.equal(Buffer.concat(seen).toString(), 'hello world');
  assert.equal(res.stderr, 'resize 30x100\n');
  assert.equal(proc.pid, 7);
  assert.deepEqual(requests.at(-1), { command: ['cat'], env: { A: 'b' }, tty: true, rows: 24, cols: 80, timeoutSeconds: 0 });
});

test('kill sends a signal and the exit reports it', async () => {
  const sbx = await new Moat({ url, apiKey: 'k' }).sandboxes.get('ok');
  const proc = sbx.spawn('sleep 100');
  proc.kill('SIGINT');
  const res = await proc.wait();
  assert.equal(res.exitCode, 130);
  assert.equal(res.signal, 'SIGINT');
});

test('a refused handshake becomes a MoatError with the Status message', async () => {
  const sbx = await new Moat({ url, apiKey: 'k' }).sandboxes.get('missing');
  await assert.rejects(sbx.spawn(['true']).wait(), (err: unknown) => {
    assert.ok(err instanceof MoatError);
    assert.equal(err.status, 404);
    assert.equal(err.message, 'sandbox "missing" not found');
    return true;
  });
});

test('a program that cannot start rejects with ExecError', async () => {
  const sbx = await new Moat({ url, apiKey: 'k' }).sandboxes.get('ok');
  await assert.rejects(sbx.spawn(['missing']).wait(), (err: unknown) => err instanceof ExecError && err.reason === 'NotFound');
});
