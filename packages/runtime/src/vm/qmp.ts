import { connect, type Socket } from 'node:net';

type Pending = { resolve(v: unknown): void; reject(e: Error): void };

/**
 * A QEMU Machine Protocol connection (JSON lines over the VM's unix socket).
 * Only what Moat needs: commands in order, their replies matched by id.
 */
export class Qmp {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed?: Error;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    const fail = (err?: Error) => {
      this.closed = err ?? new Error('QMP connection closed');
      for (const p of this.pending.values()) p.reject(this.closed);
      this.pending.clear();
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
  }

  static async connect(path: string, timeoutMs = 5000): Promise<Qmp> {
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = connect(path);
      const t = setTimeout(() => s.destroy(new Error(`QMP ${path}: no answer within ${timeoutMs} ms`)), timeoutMs);
      s.once('connect', () => (clearTimeout(t), resolve(s)));
      s.once('error', (e) => (clearTimeout(t), reject(e)));
    });
    const qmp = new Qmp(sock);
    // QEMU serves one monitor client at a time: a second one waits here, not forever.
    const t = setTimeout(() => sock.destroy(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
    try {
      await qmp.execute('qmp_capabilities');
    } finally {
      clearTimeout(t);
    }
    return qmp;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(this.closed);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  close() {
    this.sock.destroy();
  }

  private onData(d: string) {
    this.buf += d;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as { id?: number; return?: unknown; error?: { class: string; desc: string } };
      const p = msg.id !== undefined ? this.pending.get(msg.id) : undefined;
      if (!p) continue; // greeting and events
      this.pending.delete(msg.id!);
      if (msg.error) p.reject(new Error(`QMP: ${msg.error.desc}`));
      else p.resolve(msg.return);
    }
  }
}
