import type { Static, TSchema } from '@sinclair/typebox';
import type { Sandbox } from '@moat/core';
import type { SandboxAgent } from '@moat/runtime';
import type { FastifyRequest } from 'fastify';
import type { ServerStream } from './connect-rpc.js';
import type { E2bSandbox } from './sandboxes.js';

// The seam between envd.ts, which serves envd's routes, and the services behind them (envd-process.ts, envd-filesystem.ts, envd-files.ts).

/** A call's sandbox, agent and user, with relative paths resolved against that user's home, as envd does. */
export interface EnvdTarget {
  e2b: E2bSandbox;
  sandbox: Sandbox;
  agent: SandboxAgent;
  user: string;
  resolve(path: string, what?: string): string;
}

export type Handler<S extends TSchema, R> = (t: EnvdTarget, body: Static<S>, req: FastifyRequest) => Promise<R>;
export type StreamHandler<S extends TSchema> = (t: EnvdTarget, body: Static<S>, stream: ServerStream, req: FastifyRequest) => Promise<void>;

export interface EnvdRoutes {
  unary<S extends TSchema>(method: string, schema: S, fn: Handler<S, unknown>): void;
  stream<S extends TSchema>(method: string, schema: S, fn: StreamHandler<S>): void;
  target(req: FastifyRequest, username?: string): Promise<EnvdTarget>;
}
