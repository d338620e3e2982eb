import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Sets hostnames inside sandboxes through one long-lived moat-hostname
 * process (a spawn per rename would cost more than the rest of a claim).
 * Requests are answered in order, one line each.
 */
export class HostnameSetter {
  private child?: ChildProcessWithoutNullStreams;
  private readonly waiting: { resolve(): void; reject(e: Error): void }[] = [];

  constructor(private readonly binary: string) {}

  set(pid: number, hostname: string): Promise<void> {
    const child = this.start();
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      child.stdin.write(`${pid} ${hostname}\n`);
    });
  }

  close(): void {
    this.child?.stdin.end();
  }

  private start(): ChildProcessWithoutNullStreams {
    if (this.child) return this.child;
    const child = spawn(this.binary, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?(): void }).unref?.();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-500)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const w = this.waiting.shift();
      if (line === 'ok') w?.resolve();
      else w?.reject(new Error(`setting the hostname failed: ${line.replace(/^error: /, '')}`));
    });
    const fail = (why: string) => {
      if (this.child === child) this.child = undefined;
      for (const w of this.waiting.splice(0)) w.reject(new Error(`moat-hostname ${why}${stderr ? `: ${stderr.trim()}` : ''}`));
    };
    child.on('error', (err) => fail(`could not run (${err.message}); build it with \`make -C packages/agent\``));
    child.on('exit', (code) => fail(`exited with ${code}`));
    child.stdin.on('error', () => {}); // reported through 'exit'
    this.child = child;
    return child;
  }
}
