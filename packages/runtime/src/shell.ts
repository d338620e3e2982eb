import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * One long-lived `sh` that runs scripts in turn. Spawning a process from a
 * large Node process costs milliseconds of its event loop (the fork copies the
 * server's page tables); forking from a small shell does not. A sandbox's
 * start and teardown are a dozen short commands: see runInShell.
 * Scripts must take any input from heredocs, never from the shell's stdin.
 */
class PersistentShell {
  private child?: ChildProcessWithoutNullStreams;
  private tail: Promise<unknown> = Promise.resolve();

  /** The script's exit code and its output (stdout and stderr together). */
  run(script: string): Promise<{ code: number; output: string }> {
    const next = this.tail.then(() => this.exec(script));
    this.tail = next.catch(() => {});
    return next;
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

/** A word for sh, quoted. */
export const shQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * How many scripts the pool runs at once: as many as sandbox starts run together. A network namespace's
 * creation can wait tens of milliseconds on the kernel (RCU), which one shell would make everyone wait for.
 */
const POOL_SIZE = 8;
const pool = Array.from({ length: POOL_SIZE }, () => ({ shell: new PersistentShell(), pending: 0 }));

export interface ShellCommandOptions {
  cwd?: string;
  /** Resolve with the exit code instead of rejecting when the command fails. */
  allowFail?: boolean;
  /** Append the command's stdout and stderr to this file instead of capturing them. */
  log?: string;
}

/**
 * Runs a host command as run() does, forked by one of a few persistent shells
 * instead of by Node. For the commands of a sandbox's start and teardown, which
 * the server runs by the thousand; stdout and stderr come back together.
 */
export async function runInShell(cmd: string, args: string[], opts: ShellCommandOptions = {}): Promise<{ code: number; output: string }> {
  const line = [cmd, ...args].map(shQuote).join(' ');
  const r = await runScript(`${opts.cwd ? `cd ${shQuote(opts.cwd)} && ` : ''}${line}${opts.log ? ` >>${shQuote(opts.log)} 2>&1` : ''}`);
  if (r.code !== 0 && !opts.allowFail) {
    if (r.code === 127 && /not found/.test(r.output)) throw new Error(`${cmd} is not installed (not found on PATH)`);
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.output.trim()}`);
  }
  return r;
}

/** Runs a script (see PersistentShell.run) in the least busy shell of the pool. */
export async function runScript(script: string): Promise<{ code: number; output: string }> {
  const slot = pool.reduce((a, b) => (b.pending < a.pending ? b : a));
  slot.pending++;
  try {
    return await slot.shell.run(script);
  } finally {
    slot.pending--;
  }
}
