import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { WebSocketServer, type WebSocket } from 'ws';
import { SHELL_COMMAND } from '../src/commands/shell.js';
import { run, SBX, sandbox } from './helpers.js';

// Fake WebSocket exec: upper-cases stdin to stdout; on stdin EOF exits with the
// number of bytes it read (so the test sees stdin arrived whole).
const server = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(sandbox('box')));
});
const requests: Record<string, unknown>[] = [];
let env: Record<string, string>;

before(async () => {
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws: WebSocket, req) => {
    assert.equal(req.url, `${SBX}/box/exec/ws`);
    let first = true;
    let n = 0;
    ws.on('message', (data: Buffer, isBinary) => {
      if (first) {
        first = false;
        const request = JSON.parse(data.toString());
        requests.push(request);
        ws.send(JSON.stringify({ type: 'started', pid: 3 }));
        if (request.command[0] === 'true') {
          ws.send(JSON.stringify({ type: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 }));
          ws.close();
        }
        return;
      }
      if (!isBinary) return;
      if (data[0] === 0x00) {
        n += data.length - 1;
        ws.send(Buffer.concat([Buffer.from([0x01]), Buffer.from(data.subarray(1).toString().toUpperCase())]));
      } else if (data[0] === 0x01) {
        ws.send(JSON.stringify({ type: 'exit', exitCode: n, signal: null, timedOut: false, durationMs: 1 }));
        ws.close();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  env = { MOAT_URL: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, MOAT_API_KEY: 'k' };
});
after(() => new Promise<void>((r) => server.close(() => r())));

test('exec -i pipes stdin, then EOF, and takes the remote exit code', async () => {
  const r = await run(['exec', '-i', 'box', '--', 'cat'], { env, stdin: 'hello\n' });
  assert.equal(r.stdout, 'HELLO\n');
  assert.equal(r.code, 6);
  assert.deepEqual(requests.at(-1), { command: ['cat'], env: {}, tty: false, timeoutSeconds: 0 });
});

test('-it combines, and options may follow the sandbox name', async () => {
  const r = await run(['exec', 'box', '-it', '--', 'cat'], { env, stdin: 'ab' });
  assert.equal(r.code, 2);
  assert.equal(requests.at(-1)!.tty, true);
});

test('exec -t asks for a terminal with a size and TERM, without reading stdin', async () => {
  const r = await run(['exec', '-t', 'box', '--', 'true'], { env: { ...env, TERM: 'screen' } });
  assert.equal(r.code, 0);
  assert.deepEqual(requests.at(-1), { command: ['true'], env: { TERM: 'screen' }, tty: true, rows: 24, cols: 80, timeoutSeconds: 0 });
});

test('shell runs a login shell with a terminal and stdin', async () => {
  const r = await run(['shell', 'box', '-u', 'dev'], { env, stdin: 'ls\n' });
  assert.equal(r.code, 3);
  const req = requests.at(-1)!;
  assert.deepEqual(req.command, SHELL_COMMAND);
  assert.equal(req.tty, true);
  assert.equal(req.user, 'dev');
});
