import { Command, CommanderError } from 'commander';
import { createRequire } from 'node:module';
import { registerApply } from './commands/apply.js';
import { registerAudit } from './commands/audit.js';
import { registerConfig } from './commands/config.js';
import { registerCp } from './commands/cp.js';
import { registerExec } from './commands/exec.js';
import { registerFiles } from './commands/files.js';
import { registerEgress } from './commands/egress.js';
import { registerGateway } from './commands/gateway.js';
import { registerGet } from './commands/get.js';
import { registerIdentity } from './commands/identity.js';
import { registerImages } from './commands/images.js';
import { registerLogin } from './commands/login.js';
import { registerSandbox } from './commands/sandbox.js';
import { registerSecrets } from './commands/secrets.js';
import { registerBackup } from './commands/backup.js';
import { registerVolume } from './commands/volume.js';
import { registerShell } from './commands/shell.js';
import { registerUp } from './commands/up.js';
import { registerWait } from './commands/wait.js';
import { Context } from './context.js';
import { exitCodeFor, isExpected } from './errors.js';
import { processIo, type Io } from './io.js';

// package.json sits one level above both src/ and dist/.
const VERSION = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

export function buildProgram(ctx: Context): Command {
  const program = new Command('moat')
    .description('Self-hosted sandboxes for AI agents')
    .version(VERSION)
    // Settings made before .command() are inherited by every subcommand.
    .exitOverride()
    .configureOutput({ writeOut: (s) => ctx.out(s), writeErr: (s) => ctx.err(s) })
    .showHelpAfterError('(run with --help for usage)');
  registerUp(program, ctx);
  registerConfig(program, ctx);
  registerLogin(program, ctx);
  registerSandbox(program, ctx);
  registerExec(program, ctx);
  registerShell(program, ctx);
  registerCp(program, ctx);
  registerFiles(program, ctx);
  registerApply(program, ctx);
  registerGet(program, ctx);
  registerEgress(program, ctx);
  registerWait(program, ctx);
  registerImages(program, ctx);
  registerIdentity(program, ctx);
  registerAudit(program, ctx);
  registerSecrets(program, ctx);
  registerVolume(program, ctx);
  registerBackup(program, ctx);
  registerGateway(program, ctx);
  return program;
}

/**
 * Run the CLI with `argv` (without node and script) and return the exit code.
 * Never throws and never exits the process, so tests can call it in-process.
 */
export async function main(argv: string[], io: Partial<Io> = {}): Promise<number> {
  const ctx = new Context({ ...processIo(), ...io });
  try {
    await buildProgram(ctx).parseAsync(argv, { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode; // commander already said why (or printed help)
    const debug = !!ctx.io.env.MOAT_DEBUG && ctx.io.env.MOAT_DEBUG !== '0';
    const message = err instanceof Error ? err.message : String(err);
    ctx.err(`error: ${message}${isExpected(err) || debug ? '' : ' (set MOAT_DEBUG=1 for details)'}\n`);
    if (debug && err instanceof Error && err.stack) ctx.err(`${err.stack}\n`);
    return exitCodeFor(err);
  }
}
