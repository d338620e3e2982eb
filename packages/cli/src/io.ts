/**
 * Everything the CLI touches of its process, so main() can run in-process
 * (tests, embedding) with fake streams, env and signals.
 */
export interface Io {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(mode: boolean): unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number; rows?: number };
  stderr: NodeJS.WritableStream;
  env: Record<string, string | undefined>;
  cwd: string;
  /** Source of SIGINT/SIGTERM (and stdout 'resize' comes from stdout). */
  signals: { on(signal: NodeJS.Signals, fn: () => void): unknown; off(signal: NodeJS.Signals, fn: () => void): unknown };
  /** Hard exit, for a second Ctrl-C while `moat up` is shutting down. */
  exit(code: number): void;
}

export function processIo(): Io {
  return {
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    signals: process,
    exit: (code) => process.exit(code),
  };
}
