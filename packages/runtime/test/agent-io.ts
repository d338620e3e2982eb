import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { AgentClient } from '../src/agent/index.js';

/** Runs `command` to its end with `stdin` (then EOF), collecting its stdout. */
export async function run(agent: AgentClient, command: string[], stdin?: Buffer) {
  const out: Buffer[] = [];
  const h = agent.exec({ command }, { onStdout: (b) => out.push(b) });
  if (stdin) {
    h.writeStdin(stdin);
    h.closeStdin();
  }
  const r = await h.done;
  return { ...r, stdout: Buffer.concat(out) };
}

/**
 * Sends `message` through a dial made by `dial` and half-closes it; a loopback TCP peer answers only once it
 * saw the FIN, with `answer(message)`. Returns what came back, so the FIN must have crossed both ways.
 */
export async function halfCloseRoundTrip(dial: (port: number) => Promise<Duplex>, message: string, answer: (s: string) => string): Promise<string> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    const got: Buffer[] = [];
    s.on('data', (b: Buffer) => got.push(b));
    s.on('end', () => s.end(answer(Buffer.concat(got).toString())));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const sock = await dial((server.address() as AddressInfo).port);
    const got: Buffer[] = [];
    sock.on('data', (b: Buffer) => got.push(b));
    sock.end(message);
    await once(sock, 'end');
    sock.destroy();
    return Buffer.concat(got).toString();
  } finally {
    server.close();
  }
}
