import { constants } from 'node:os';
import { Type, type Static } from '@sinclair/typebox';
import type { ExecHandle } from '@moat/runtime';
import { actorOf } from '../audit/requests.js';
import type { ApiContext } from '../api/context.js';
import { startExec, type ExecResult } from '../api/exec-session.js';
import { ConnectError, ServerStream, deadlineMs } from './connect-rpc.js';
import type { EnvdRoutes, EnvdTarget } from './envd-types.js';

const Selector = Type.Object(
  { pid: Type.Optional(Type.Integer({ minimum: 0 })), tag: Type.Optional(Type.String({ maxLength: 256 })) },
  { additionalProperties: false },
);
const Pty = Type.Object(
  {
    size: Type.Optional(
      Type.Object({ cols: Type.Integer({ minimum: 0, maximum: 1000 }), rows: Type.Integer({ minimum: 0, maximum: 1000 }) }, { additionalProperties: false }),
    ),
  },
  { additionalProperties: false },
);
const Config = Type.Object(
  {
    cmd: Type.String({ minLength: 1, maxLength: 4096 }),
    args: Type.Optional(Type.Array(Type.String({ maxLength: 131072 }), { maxItems: 4096 })),
    envs: Type.Optional(Type.Record(Type.String({ pattern: '^[^=\\x00]+$', maxLength: 256 }), Type.String({ maxLength: 131072 }))),
    cwd: Type.Optional(Type.String({ maxLength: 4096 })),
  },
  { additionalProperties: false },
);
const StartRequest = Type.Object(
  { process: Config, pty: Type.Optional(Pty), tag: Type.Optional(Type.String({ maxLength: 256 })), stdin: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
const SendInputRequest = Type.Object(
  { process: Selector, input: Type.Object({ stdin: Type.Optional(Type.String()), pty: Type.Optional(Type.String()) }, { additionalProperties: false }) },
  { additionalProperties: false },
);
const SignalName = Type.Union([Type.Literal('SIGNAL_SIGTERM'), Type.Literal('SIGNAL_SIGKILL'), Type.Literal(15), Type.Literal(9)]);
const SendSignalRequest = Type.Object({ process: Selector, signal: SignalName }, { additionalProperties: false });
const SelectorRequest = Type.Object({ process: Selector }, { additionalProperties: false });
const UpdateRequest = Type.Object({ process: Selector, pty: Type.Optional(Pty) }, { additionalProperties: false });

type ProcessEvent =
  { start: { pid: number } } | { data: { stdout: string } | { stderr: string } | { pty: string } } | { end: EndEvent } | { keepalive: Record<string, never> };
interface EndEvent {
  exitCode: number;
  exited: boolean;
  status: string;
  error?: string;
}

interface Proc {
  pid: number;
  tag?: string;
  config: Static<typeof Config>;
  handle: ExecHandle;
  listeners: Set<(e: ProcessEvent) => void>;
}

/** Streams without output still get a message this often, so proxies and the client see a live call. */
const MAX_KEEPALIVE_MS = 30_000;

/** envd's end event: Go's ProcessState (exit code, or -1 and the signal). */
function endEvent(r: ExecResult): EndEvent {
  return r.signal
    ? { exitCode: -1, exited: false, status: `signal: ${r.signal}` }
    : { exitCode: r.exitCode, exited: true, status: `exit status ${r.exitCode}` };
}

/**
 * envd's process service on Moat's exec: each process is an exec through the
 * sandbox's agent, held here so it outlives the call that started it (as in
 * envd) and can be reconnected to, fed and signalled. Processes end with the
 * server, since the agent's connection is their lifeline.
 */
export function processService(routes: EnvdRoutes, ctx: ApiContext) {
  const bySandbox = new Map<string, Map<number, Proc>>();
  const procsOf = (uid: string): ReadonlyMap<number, Proc> => bySandbox.get(uid) ?? new Map();
  const add = (uid: string, p: Proc) => (bySandbox.get(uid) ?? bySandbox.set(uid, new Map()).get(uid)!).set(p.pid, p);
  const remove = (uid: string, pid: number) => {
    const procs = bySandbox.get(uid);
    procs?.delete(pid);
    if (!procs?.size) bySandbox.delete(uid);
  };

  function find(t: EnvdTarget, sel: Static<typeof Selector>): Proc {
    const procs = [...procsOf(t.sandbox.metadata.uid).values()];
    const p = sel.pid !== undefined ? procs.find((x) => x.pid === sel.pid) : procs.find((x) => x.tag !== undefined && x.tag === sel.tag);
    if (!p) throw new ConnectError('not_found', `process ${sel.pid !== undefined ? `with pid ${sel.pid}` : `with tag "${sel.tag}"`} not found`);
    return p;
  }

  /** Relays a process's events to one call until it ends, the deadline passes or the client leaves. */
  function follow(stream: ServerStream, proc: Proc | Promise<Proc>, headers: Record<string, string | string[] | undefined>) {
    const pingMs = Math.min(MAX_KEEPALIVE_MS, (Number(headers['keepalive-ping-interval']) || 30) * 1000);
    const ping = setInterval(() => stream.send({ event: { keepalive: {} } }), pingMs);
    const deadline = deadlineMs(headers['connect-timeout-ms']);
    const timer = deadline
      ? setTimeout(() => stop(new ConnectError('deadline_exceeded', `the call's deadline of ${deadline} ms passed; the process goes on`)), deadline)
      : undefined;
    let detach = () => {};
    const stop = (err?: unknown) => {
      clearInterval(ping);
      clearTimeout(timer);
      detach();
      stream.end(err);
    };
    stream.body.on('close', () => stop());
    const attach = (p: Proc) => {
      const listener = (e: ProcessEvent) => {
        stream.send({ event: e });
        if ('end' in e) stop();
      };
      p.listeners.add(listener);
      detach = () => p.listeners.delete(listener);
    };
    if (proc instanceof Promise) proc.then(attach, stop);
    else attach(proc);
  }

  routes.stream('process.Process/Start', StartRequest, async (t, body, stream, req) => {
    const { process: config, pty, tag, stdin } = body;
    const env = { ...(await ctx.tenancy.env(t.sandbox, actorOf(req))), ...t.e2b.envVars, ...config.envs };
    const tty = pty !== undefined;
    const size = pty?.size?.rows && pty.size.cols ? { rows: pty.size.rows, cols: pty.size.cols } : {};
    const listeners = new Set<(e: ProcessEvent) => void>();
    // Output can arrive before the pid is known; the start event must come first.
    let pending: ProcessEvent[] | undefined = [];
    const emit = (e: ProcessEvent) => (pending ? pending.push(e) : listeners.forEach((l) => l(e)));
    const out = (kind: 'stdout' | 'stderr') => (b: Buffer) =>
      emit({ data: tty ? { pty: b.toString('base64') } : kind === 'stdout' ? { stdout: b.toString('base64') } : { stderr: b.toString('base64') } });
    const { handle, result } = startExec(
      t.agent,
      t.sandbox,
      {
        command: [config.cmd, ...(config.args ?? [])],
        env,
        user: t.user,
        ...(config.cwd ? { cwd: t.resolve(config.cwd) } : {}),
        ...(tty ? { tty, ...size } : {}),
      },
      { onStdout: out('stdout'), onStderr: out('stderr') },
    );
    if (!stdin && !tty) handle.closeStdin();
    const started = handle.pid.then((pid) => {
      const proc: Proc = { pid, ...(tag !== undefined ? { tag } : {}), config, handle, listeners };
      add(t.sandbox.metadata.uid, proc);
      stream.send({ event: { start: { pid } } });
      return proc;
    });
    follow(stream, started, req.headers);
    void started.then(
      (proc) => {
        const queued = pending!;
        pending = undefined;
        queued.forEach(emit);
        result
          .then(
            (r) => emit({ end: endEvent(r) }),
            (err: Error) => emit({ end: { exitCode: -1, exited: false, status: 'error', error: err.message } }),
          )
          .finally(() => remove(t.sandbox.metadata.uid, proc.pid));
      },
      () => {},
    );
  });

  routes.stream('process.Process/Connect', SelectorRequest, async (t, body, stream, req) => {
    const proc = find(t, body.process);
    stream.send({ event: { start: { pid: proc.pid } } });
    follow(stream, proc, req.headers);
  });

  routes.unary('process.Process/List', Type.Object({}, { additionalProperties: false }), async (t) => ({
    processes: [...procsOf(t.sandbox.metadata.uid).values()].map((p) => ({
      pid: p.pid,
      ...(p.tag !== undefined ? { tag: p.tag } : {}),
      config: { cmd: p.config.cmd, args: p.config.args ?? [], envs: p.config.envs ?? {}, ...(p.config.cwd ? { cwd: p.config.cwd } : {}) },
    })),
  }));

  routes.unary('process.Process/SendInput', SendInputRequest, async (t, body) => {
    const data = body.input.stdin ?? body.input.pty;
    if (data === undefined) throw new ConnectError('invalid_argument', 'input.stdin or input.pty is required');
    const proc = find(t, body.process);
    proc.handle.writeStdin(Buffer.from(data, 'base64'));
    await proc.handle.drain();
    return {};
  });

  routes.unary('process.Process/SendSignal', SendSignalRequest, async (t, body) => {
    const kill = body.signal === 'SIGNAL_SIGKILL' || body.signal === 9;
    find(t, body.process).handle.signal(kill ? constants.signals.SIGKILL : constants.signals.SIGTERM);
    return {};
  });

  routes.unary('process.Process/CloseStdin', SelectorRequest, async (t, body) => {
    find(t, body.process).handle.closeStdin();
    return {};
  });

  routes.unary('process.Process/Update', UpdateRequest, async (t, body) => {
    const proc = find(t, body.process);
    const size = body.pty?.size;
    if (size?.rows && size.cols) proc.handle.resize(size.rows, size.cols);
    return {};
  });
}
