import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * One long-lived `sh` that runs scripts in turn. Spawning a process from a
 * large Node process costs milliseconds; forking from a small shell does not,
 * and namespace setup is a few `ip` runs that must be fast.
 * Scripts must take any input from heredocs, never from the shell's stdin.
 */
export class PersistentShell {
  private child?: ChildProcessWithoutNullStreams;
  private tail: Promise<unknown> = Promise.resolve();

  /** The script's exit code and its output (stdout and stderr together). */
  run(script: string): Promise<{ code: number; output: string }> {
    const next = this.tail.then(() => this.exec(script));
    this.tail = next.catch(() => {});
    return next;
  }

  close(): void {
    this.child?.stdin.end();
  }

  private exec(script: string): Promise<{ code: number; output: string }> {
    const child = this.start();
    const marker = `__moat_done_${randomBytes(8).toString('hex')}`;
    // Idle, the shell must not keep the process alive; busy, it must.
    const handle = child.stdout as unknown as { ref(): void; unref(): void };
    handle.ref();
    return new Promise((resolve, reject) => {
      let out = '';
      const onData = (d: Buffer) => {
        out += d.toString();
        const m = new RegExp(`${marker} (\\d+)\\n`).exec(out);
        if (!m) return;
        done();
        resolve({ code: Number(m[1]), output: out.slice(0, m.index) });
      };
      const onExit = () => {
        done();
        reject(new Error(`the shell running network setup exited: ${out.trim()}`));
      };
      const done = () => {
        handle.unref();
        child.stdout.off('data', onData);
        child.off('exit', onExit);
      };
      child.stdout.on('data', onData);
      child.on('exit', onExit);
      child.stdin.write(`(\n${script}\n) </dev/null 2>&1\necho ${marker} $?\n`);
    });
  }

  private start(): ChildProcessWithoutNullStreams {
    if (this.child && this.child.exitCode === null) return this.child;
    const child = spawn('sh', [], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?(): void }).unref?.();
    child.stdin.on('error', () => {}); // reported through 'exit'
    child.stderr.resume();
    this.child = child;
    return child;
  }
}
