import type { Command } from 'commander';
import type { Context } from '../context.js';
import { runExec } from './exec.js';

/** A login shell: bash when the image has it, else sh. */
export const SHELL_COMMAND = ['/bin/sh', '-c', 'if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi'];

export function registerShell(program: Command, ctx: Context): void {
  program
    .command('shell')
    .description('open an interactive shell in a sandbox (bash, or sh if bash is missing)')
    .argument('<name>', 'sandbox')
    .option('-u, --user <user>', 'user name or uid (default root)')
    .action(async (name: string, opts: { user?: string }) => {
      ctx.exitCode = await runExec(ctx, name, SHELL_COMMAND, { stdin: true, tty: true, env: {}, user: opts.user });
    });
}
