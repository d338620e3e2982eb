import { ExecError, MoatError, type ExecResult, type Sandbox } from '@moat/sdk';
import type { Command } from 'commander';
import { constants } from 'node:os';
import { collect, parseDuration, parseKeyValues } from '../args.js';
import type { Context } from '../context.js';

interface ExecFlags {
  stdin?: boolean;
  tty?: boolean;
  env: string[];
  workdir?: string;
  user?: string;
  timeout?: string;
}

export interface ExecRequest {
  stdin: boolean;
  tty: boolean;
  env: Record<string, string>;
  cwd?: string;
  user?: string;
  timeoutSeconds?: number;
}

/** Exit code of `moat exec` when the command ran out of time (as GNU timeout(1) does). */
export const TIMED_OUT_EXIT_CODE = 124;

export function registerExec(program: Command, ctx: Context): void {
  program
    .command('exec')
    .summary('run a command in a sandbox; exits with its exit code')
    .description('run a command in a sandbox; exits with its exit code (128+N if killed by signal N, 124 on --timeout, 127 if the program does not exist)')
    .argument('<name>', 'sandbox')
    .argument('<command...>', 'command and arguments, after --')
    .option('-i, --stdin', 'pass stdin to the command')
    .option('-t, --tty', 'allocate a terminal (raw mode locally when stdin is a terminal)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory')
    .option('-u, --user <user>', 'user name or uid (default root)')
    .option('--timeout <seconds>', 'kill the command after this long')
    .action(async (name: string, command: string[], flags: ExecFlags) => {
      ctx.exitCode = await runExec(ctx, name, command, {
        stdin: !!flags.stdin,
        tty: !!flags.tty,
        env: parseKeyValues(flags.env, '--env'),
        cwd: flags.workdir,
        user: flags.user,
        timeoutSeconds: flags.timeout === undefined ? undefined : parseDuration(flags.timeout, '--timeout'),
      });
    });
}

export async function runExec(ctx: Context, name: string, command: string[], req: ExecRequest): Promise<number> {
  const sbx = await (await ctx.moat()).sandboxes.get(name);
  const result = req.stdin || req.tty ? await interactive(ctx, sbx, command, req) : await streamed(ctx, sbx, command, req);
  return exitCodeOf(result, (msg) => ctx.err(`error: ${msg}\n`));
}

/** 124 for a timeout, else the command's code; a signal without a code becomes 128+N. */
export function exitCodeOf(r: Pick<ExecResult, 'exitCode' | 'signal' | 'timedOut'>, warn?: (msg: string) => void): number {
  if (r.timedOut) {
    warn?.('command timed out and was killed');
    return TIMED_OUT_EXIT_CODE;
  }
  if (r.signal && !(r.exitCode > 128)) {
    const n = constants.signals[r.signal as NodeJS.Signals];
    if (n) return 128 + n;
  }
  return r.exitCode;
}

/** NDJSON exec: output relayed byte for byte as it arrives (exec()'s callbacks get decoded text). */
async function streamed(ctx: Context, sbx: Sandbox, command: string[], req: ExecRequest): Promise<ExecResult> {
  const events = sbx.execStream(command, { env: req.env, cwd: req.cwd, user: req.user, timeoutSeconds: req.timeoutSeconds });
  for await (const ev of events) {
    if (ev.type === 'stdout') ctx.out(ev.data);
    else if (ev.type === 'stderr') ctx.err(ev.data);
    else if (ev.type === 'exit') return { ...ev, stdout: '', stderr: '' };
    else if (ev.type === 'error') throw new ExecError(ev.reason, ev.message);
  }
  throw new MoatError(0, 'ProtocolError', 'the exec stream ended before the command exited');
}

/** WebSocket exec: stdin, terminal and signals wired to the remote process. */
async function interactive(ctx: Context, sbx: Sandbox, command: string[], req: ExecRequest): Promise<ExecResult> {
  const { io } = ctx;
  // Raw mode only when we also forward stdin: otherwise it would just swallow Ctrl-C.
  const raw = req.tty && req.stdin && !!io.stdin.isTTY && typeof io.stdin.setRawMode === 'function';
  const size = () => ({ rows: io.stdout.rows || 24, cols: io.stdout.columns || 80 });
  // Like ssh: the remote terminal should speak the local terminal's language.
  const env = req.tty && !('TERM' in req.env) ? { TERM: io.env.TERM || 'xterm-256color', ...req.env } : req.env;
  const proc = sbx.spawn(command, {
    tty: req.tty,
    ...(req.tty ? size() : {}),
    env,
    cwd: req.cwd,
    user: req.user,
    timeoutSeconds: req.timeoutSeconds,
    collect: false,
    onStdout: (b) => ctx.out(b),
    onStderr: (b) => ctx.err(b),
  });

  const cleanups: (() => void)[] = [];
  const listen = (emitter: NodeJS.EventEmitter, event: string, fn: (...args: any[]) => void) => {
    emitter.on(event, fn);
    cleanups.push(() => emitter.off(event, fn));
  };
  if (req.stdin) {
    listen(io.stdin, 'data', (d: Buffer | string) => proc.write(d));
    listen(io.stdin, 'end', () => proc.end());
    io.stdin.resume();
    cleanups.push(() => io.stdin.pause()); // or a TTY stdin keeps the process alive
  }
  if (raw) {
    io.stdin.setRawMode!(true);
    cleanups.push(() => io.stdin.setRawMode!(false));
  }
  if (req.tty && io.stdout.isTTY) {
    listen(io.stdout, 'resize', () => {
      const s = size();
      proc.resize(s.rows, s.cols);
    });
  }
  if (!raw) {
    // In raw mode Ctrl-C travels as a byte to the remote terminal. Otherwise relay
    // signals; a second Ctrl-C gives up on the process.
    let interrupts = 0;
    const onInt = () => {
      if (++interrupts === 1) return proc.kill('SIGINT');
      proc.kill('SIGKILL');
      proc.close();
    };
    const onTerm = () => proc.kill('SIGTERM');
    io.signals.on('SIGINT', onInt);
    io.signals.on('SIGTERM', onTerm);
    cleanups.push(() => {
      io.signals.off('SIGINT', onInt);
      io.signals.off('SIGTERM', onTerm);
    });
  }
  try {
    return await proc.wait();
  } finally {
    for (const undo of cleanups.reverse()) undo();
  }
}
