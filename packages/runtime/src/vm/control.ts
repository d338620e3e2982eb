import { randomBytes } from 'node:crypto';
import { constants, openSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { Socket } from 'node:net';
import { run } from '../run.js';

/**
 * The guest's control port (virtio-serial `moat.config`), behind a QEMU pipe
 * chardev: `<base>.in` carries the host's bytes to the guest, `<base>.out` the
 * guest's to the host. QEMU holds both FIFOs open read-write, so the port is
 * always connected: the guest's reads block until the host writes (no
 * polling in an idle VM), and either side may come and go.
 *
 * First the host writes the VM's config (see packages/guest/init). After
 * that the guest's PID 1, outside the confined sandbox, serves the few
 * requests that need more privilege than the sandbox's root has: one line
 * `<id> <verb> <args>` each, answered by `<id> ok` or `<id> err <message>`.
 */
export const controlPipes = (base: string) => ({ in: `${base}.in`, out: `${base}.out` });

/** Fresh FIFOs for a QEMU about to start: bytes left in earlier ones belong to another machine. */
export async function makeControlPipes(base: string): Promise<void> {
  const p = controlPipes(base);
  await Promise.all([p.in, p.out].map((f) => unlink(f).catch(() => {})));
  await run('mkfifo', ['-m', '600', p.in, p.out]);
}

/** Writes to the guest at its own pace (QEMU keeps what the guest has not read yet). */
export async function writeControl(base: string, bytes: Buffer): Promise<void> {
  // Non-blocking: QEMU holds a reader open, and a socket over the FIFO never ties up a libuv worker.
  const s = new Socket({ fd: openSync(controlPipes(base).in, constants.O_WRONLY | constants.O_NONBLOCK), readable: false, writable: true });
  await new Promise<void>((resolve, reject) => {
    s.on('error', (err) => reject(new Error(`cannot write to the microVM's control port: ${err.message}`)));
    s.end(bytes, () => resolve());
  });
  s.destroy();
}

const MAX_REPLY = 64 * 1024;
const queues = new Map<string, Promise<unknown>>();

/**
 * One request to the guest's PID 1, answered within `timeoutMs`. Requests to
 * one VM go one at a time: a reply is told from a late one to an earlier
 * request by its id.
 */
export function controlRequest(base: string, verb: string, args: string[], timeoutMs = 15_000): Promise<void> {
  for (const a of [verb, ...args]) if (!/^[\w./:@+-]+$/.test(a)) throw new Error(`"${a}" cannot be sent to the microVM's control port`);
  const prev = queues.get(base) ?? Promise.resolve();
  const next = prev.catch(() => {}).then(() => exchange(base, `${[randomBytes(6).toString('hex'), verb, ...args].join(' ')}\n`, timeoutMs));
  queues.set(base, next);
  void next
    .finally(() => {
      if (queues.get(base) === next) queues.delete(base);
    })
    .catch(() => {});
  return next;
}

async function exchange(base: string, line: string, timeoutMs: number): Promise<void> {
  const id = line.slice(0, line.indexOf(' '));
  const s = new Socket({ fd: openSync(controlPipes(base).out, constants.O_RDONLY | constants.O_NONBLOCK), readable: true, writable: false });
  try {
    const reply = new Promise<string>((resolve, reject) => {
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString();
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const l = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (l.startsWith(`${id} `)) resolve(l.slice(id.length + 1, id.length + 1 + 500));
        }
        // What the guest writes is not trusted: answers are short lines.
        if (buf.length > MAX_REPLY) reject(new Error('the microVM wrote more than an answer to its control port'));
      });
      s.on('error', reject);
      setTimeout(() => reject(new Error(`the microVM did not answer "${line.trim().slice(id.length + 1)}" within ${timeoutMs} ms`)), timeoutMs).unref();
    });
    reply.catch(() => {}); // awaited below, once the request is written
    await writeControl(base, Buffer.from(line));
    const answer = await reply;
    if (answer !== 'ok') throw new Error(`the microVM refused "${line.trim().slice(id.length + 1)}": ${answer.replace(/^err /, '')}`);
  } finally {
    s.destroy();
  }
}
