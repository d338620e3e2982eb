import { constants } from 'node:os';
import { MoatError, type Sandbox } from '@moat/core';
import { proxyEnv } from '../network.js';
import { AgentError, type SandboxAgent, type ExecHandle, type ExecRequest as AgentExecRequest } from '@moat/runtime';

export interface ExecRequest extends AgentExecRequest {
  /** Absent or 0: no timeout. */
  timeoutSeconds?: number;
}

export interface ExecResult {
  exitCode: number;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
}

const SIGNAL_NAMES = Object.fromEntries(Object.entries(constants.signals).map(([k, v]) => [v, k]));

export function signalNumber(name: string): number {
  const n = (constants.signals as Record<string, number>)[name.startsWith('SIG') ? name : `SIG${name}`];
  if (!n) throw new MoatError(400, 'BadRequest', `unknown signal "${name}"`);
  return n;
}

/** The sandbox's own environment (from its spec, with its egress proxy) under the request's. */
function execEnv(sandbox: Sandbox, extra: Record<string, string> = {}): Record<string, string> {
  const c = sandbox.spec.podTemplate.spec.containers[0]!;
  const proxy = sandbox.status.network?.proxy;
  return {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOSTNAME: sandbox.metadata.name,
    ...sandbox.status.image?.env,
    ...(proxy ? proxyEnv(proxy) : {}),
    ...Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? ''])),
    ...extra,
  };
}

/**
 * One command in a sandbox, through its init agent. Adds what the agent does
 * not know about: the sandbox's environment, the timeout, and signal names.
 */
export function startExec(
  agent: SandboxAgent,
  sandbox: Sandbox,
  req: ExecRequest,
  out: { onStdout(b: Buffer): void; onStderr(b: Buffer): void },
): { handle: ExecHandle; result: Promise<ExecResult> } {
  const started = performance.now();
  const { timeoutSeconds, ...request } = req;
  const cwd = request.cwd ?? sandbox.status.image?.workingDir;
  const handle = agent.exec({ ...request, ...(cwd ? { cwd } : {}), env: execEnv(sandbox, req.env) }, out);
  let timedOut = false;
  const timer = timeoutSeconds
    ? setTimeout(() => {
        timedOut = true;
        handle.signal(constants.signals.SIGKILL);
      }, timeoutSeconds * 1000)
    : undefined;
  const result = handle.done
    .then(({ exitCode, signal }) => ({
      exitCode,
      signal: signal ? (SIGNAL_NAMES[signal] ?? `SIG${signal}`) : null,
      timedOut,
      durationMs: Math.round((performance.now() - started) * 100) / 100,
    }))
    .catch((err: unknown) => {
      throw err instanceof AgentError && (err.code === 'ENOENT' || err.code === 'EACCES')
        ? new MoatError(404, 'NotFound', `cannot run "${req.command[0]}": ${err.message}`)
        : err instanceof AgentError
          ? new MoatError(502, 'SandboxUnavailable', `the sandbox did not answer: ${err.message}`)
          : err;
    })
    .finally(() => clearTimeout(timer));
  return { handle, result };
}
