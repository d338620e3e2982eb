import { spawn, type SpawnOptions } from 'node:child_process';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a host command to completion; rejects with its stderr when it fails (unless allowFail). */
export function run(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { allowFail?: boolean; input?: string; onStderrLine?: (line: string) => void } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let partial = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      const s = d.toString();
      stderr += s;
      if (opts.onStderrLine) {
        const lines = (partial + s).split(/\r?\n|\r/);
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) opts.onStderrLine(l);
      }
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'ENOENT' ? new Error(`${cmd} is not installed (not found on PATH)`) : err);
    });
    child.on('close', (code) => {
      const res = { code: code ?? -1, stdout, stderr };
      if (code !== 0 && !opts.allowFail) {
        reject(new Error(`${cmd} ${args.join(' ')} failed (exit ${code}): ${stderr.trim() || stdout.trim()}`));
      } else resolve(res);
    });
    child.stdin!.on('error', () => {}); // EPIPE when the command exits without reading its input
    child.stdin!.end(opts.input ?? '');
  });
}

export async function which(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${cmd}`], { allowFail: true });
  return r.code === 0;
}
