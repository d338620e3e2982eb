import { PassThrough } from 'node:stream';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { MoatError, type Sandbox } from '@moat/core';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { actorOf, addAuditDetail } from '../../audit/requests.js';
import type { ApiContext } from '../context.js';
import { authorize } from '../../auth/authorize.js';
import { signalNumber, startExec, type ExecRequest } from '../exec-session.js';
import { toMoatError } from '../errors.js';
import { NameParams, SANDBOXES } from './sandboxes.js';

const ExecBody = Type.Object(
  {
    command: Type.Array(Type.String({ maxLength: 131072 }), { minItems: 1, maxItems: 4096 }),
    env: Type.Optional(Type.Record(Type.String({ pattern: '^[^=\\x00]+$', maxLength: 256 }), Type.String({ maxLength: 131072 }))),
    cwd: Type.Optional(Type.String({ pattern: '^/', maxLength: 4096 })),
    user: Type.Optional(Type.String({ maxLength: 64 })),
    stdin: Type.Optional(Type.String()),
    stdinBase64: Type.Optional(Type.String()),
    timeoutSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 86400, description: '0 or absent: no timeout' })),
  },
  { additionalProperties: false },
);

const WsRequest = Type.Object(
  {
    command: ExecBody.properties.command,
    env: ExecBody.properties.env,
    cwd: ExecBody.properties.cwd,
    user: ExecBody.properties.user,
    timeoutSeconds: ExecBody.properties.timeoutSeconds,
    tty: Type.Optional(Type.Boolean()),
    rows: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    cols: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  },
  { additionalProperties: false },
);

export function execRoutes(app: FastifyInstance, ctx: ApiContext) {
  app.post(
    `${SANDBOXES}/:name/exec`,
    {
      schema: {
        tags: ['exec'],
        summary: 'Run a command; the response streams NDJSON lines: started, stdout/stderr (base64), exit',
        params: NameParams,
        body: ExecBody,
      },
    },
    async (req, reply) => {
      const { namespace, name } = req.params as { namespace: string; name: string };
      authorize(req.principal, namespace, 'write');
      const body = req.body as Static<typeof ExecBody>;
      const { sandbox, agent } = await ctx.backend.sandboxes.running(namespace, name);
      const env = { ...(await ctx.tenancy.env(sandbox, actorOf(req))), ...body.env };
      const out = new PassThrough();
      const line = (o: unknown) => out.write(JSON.stringify(o) + '\n');
      const { handle, result } = startExec(
        agent,
        sandbox,
        { ...body, env },
        {
          onStdout: (b) => line({ type: 'stdout', data: b.toString('base64') }),
          onStderr: (b) => line({ type: 'stderr', data: b.toString('base64') }),
        },
      );
      const stdin = body.stdinBase64 !== undefined ? Buffer.from(body.stdinBase64, 'base64') : body.stdin !== undefined ? Buffer.from(body.stdin) : undefined;
      if (stdin) handle.writeStdin(stdin);
      handle.closeStdin();
      req.raw.on('close', () => {
        if (!reply.raw.writableFinished) handle.kill();
      });
      handle.pid.then(
        (pid) => line({ type: 'started', pid }),
        () => {},
      );
      result.then(
        (r) => {
          addAuditDetail(req, { command: body.command, ...r });
          out.end(JSON.stringify({ type: 'exit', ...r }) + '\n');
        },
        (err) => {
          const e = toMoatError(err, req);
          addAuditDetail(req, { command: body.command, error: e.message });
          out.end(JSON.stringify({ type: 'error', reason: e.reason, message: e.message }) + '\n');
        },
      );
      // An agent that cannot be reached ran nothing: that is the answer (502 before any output), not a 200 stream with an error line.
      const failed = await handle.pid.then(
        () => undefined,
        () => result.catch((err: unknown) => err), // pid fails with the exec: its error, mapped
      );
      if (failed instanceof MoatError && failed.reason === 'SandboxUnavailable') throw failed;
      return reply.type('application/x-ndjson').send(out);
    },
  );

  // A WebSocket exec is a GET upgrade, so the request hook does not see it as a mutation: it is recorded here.
  const auditWs = (req: FastifyRequest, sandbox: Sandbox, result: 'success' | 'failed', detail: Record<string, unknown>) =>
    ctx.audit.record({
      actor: actorOf(req),
      action: 'GET sandboxes/{name}/exec/ws',
      namespace: sandbox.metadata.namespace,
      sandbox: sandbox.metadata.name,
      object: `sandboxes/${sandbox.metadata.name}/exec/ws`,
      result,
      detail,
    });
  // Checks run before the upgrade, so a refused exec is a plain HTTP Status response, not a closed socket.
  // The environment is made here too: once the socket is open, stdin may follow the request at once and must find its handler.
  const targets = new WeakMap<FastifyRequest, Awaited<ReturnType<typeof ctx.backend.sandboxes.running>> & { env: Record<string, string> }>();
  app.get(
    `${SANDBOXES}/:name/exec/ws`,
    {
      websocket: true,
      schema: { tags: ['exec'], summary: 'Interactive exec over a WebSocket (see docs/api.md)', params: NameParams },
      preHandler: async (req) => {
        const { namespace, name } = req.params as { namespace: string; name: string };
        authorize(req.principal, namespace, 'write');
        const target = await ctx.backend.sandboxes.running(namespace, name);
        targets.set(req, { ...target, env: await ctx.tenancy.env(target.sandbox, actorOf(req)) });
      },
    },
    (socket: WebSocket, req) => {
      const { sandbox, agent, env: sandboxEnv } = targets.get(req)!;
      socket.once('message', async (first, isBinary) => {
        try {
          if (isBinary) throw new MoatError(400, 'BadRequest', 'the first message must be the JSON exec request');
          const body = parseWsRequest(first.toString());
          const env = { ...sandboxEnv, ...body.env };
          const send = (tag: number) => (b: Buffer) => socket.send(Buffer.concat([Buffer.from([tag]), b]));
          const { handle, result } = startExec(agent, sandbox, { ...body, env }, { onStdout: send(1), onStderr: send(2) });
          socket.on('message', (data: Buffer, binary) => {
            try {
              if (binary) {
                if (data[0] === 0) handle.writeStdin(data.subarray(1));
                else if (data[0] === 1) handle.closeStdin();
                return;
              }
              const msg = JSON.parse(data.toString()) as { type?: string; rows?: number; cols?: number; signal?: string };
              if (msg.type === 'resize' && msg.rows && msg.cols) handle.resize(msg.rows, msg.cols);
              else if (msg.type === 'signal' && msg.signal) handle.signal(signalNumber(msg.signal));
            } catch (err) {
              socket.send(JSON.stringify({ type: 'warning', message: `ignored message: ${(err as Error).message}` }));
            }
          });
          socket.on('close', () => handle.kill());
          handle.pid.then(
            (pid) => socket.send(JSON.stringify({ type: 'started', pid })),
            () => {},
          );
          const r = await result;
          void auditWs(req, sandbox, 'success', { command: body.command, tty: !!body.tty, ...r });
          socket.send(JSON.stringify({ type: 'exit', ...r }));
        } catch (err) {
          const e = toMoatError(err, req);
          void auditWs(req, sandbox, 'failed', { error: e.message });
          socket.send(JSON.stringify({ type: 'error', reason: e.reason, message: e.message }));
        }
        socket.close(1000);
      });
    },
  );
}

function parseWsRequest(text: string): ExecRequest {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new MoatError(400, 'BadRequest', `malformed JSON exec request: ${(err as Error).message}`);
  }
  const first = Value.Errors(WsRequest, v).First();
  if (first) throw new MoatError(400, 'BadRequest', `invalid exec request: ${first.path || '/'} ${first.message}`);
  return v as ExecRequest;
}
