import { ExecError, MoatError } from '@moat/sdk';

/** An expected failure: printed as `error: <message>` without a stack trace. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/**
 * Exit code for an error. Shell conventions for commands that could not run:
 * 127 "command not found", 126 "found but not executable".
 */
export function exitCodeFor(err: unknown): number {
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof ExecError) return err.reason === 'NotFound' ? 127 : err.reason === 'Forbidden' ? 126 : 1;
  return 1;
}

/** Errors whose message is meant for the user as is; anything else is a bug worth a hint. */
export function isExpected(err: unknown): boolean {
  if (err instanceof CliError || err instanceof MoatError) return true;
  // Local file problems (ENOENT, EACCES, ...) carry a clear message of their own.
  return typeof (err as { code?: unknown })?.code === 'string' && typeof (err as { syscall?: unknown }).syscall === 'string';
}
