/**
 * The Connect protocol's JSON flavour, as E2B's SDKs speak it to envd:
 * unary calls are plain JSON bodies; server-streaming calls send one
 * enveloped request and get enveloped messages back, then an end-of-stream
 * envelope that carries the error, if any. Written out here (a few lines)
 * instead of @connectrpc/connect-node, which would need protobuf code
 * generated from envd's .proto files to serve the same JSON.
 * https://connectrpc.com/docs/protocol
 */
import { PassThrough } from 'node:stream';
import { MoatError } from '@moat/core';
import { AgentError } from '@moat/runtime';
import type { FastifyReply } from 'fastify';

export const STREAM_CONTENT_TYPE = 'application/connect+json';
const END_STREAM = 0x02;
const COMPRESSED = 0x01;

export type ConnectCode =
  | 'canceled'
  | 'unknown'
  | 'invalid_argument'
  | 'deadline_exceeded'
  | 'not_found'
  | 'already_exists'
  | 'permission_denied'
  | 'resource_exhausted'
  | 'failed_precondition'
  | 'aborted'
  | 'out_of_range'
  | 'unimplemented'
  | 'internal'
  | 'unavailable'
  | 'unauthenticated';

const HTTP_STATUS: Record<ConnectCode, number> = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 400,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  unauthenticated: 401,
};

export class ConnectError extends Error {
  constructor(
    readonly code: ConnectCode,
    message: string,
  ) {
    super(message);
  }
}

const BY_HTTP: Record<number, ConnectCode> = {
  400: 'invalid_argument',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'not_found',
  408: 'deadline_exceeded',
  409: 'already_exists',
  413: 'resource_exhausted',
  422: 'invalid_argument',
  429: 'resource_exhausted',
  501: 'unimplemented',
  502: 'unavailable',
  503: 'unavailable',
  504: 'deadline_exceeded',
  507: 'resource_exhausted',
};
const BY_ERRNO: Record<string, ConnectCode> = {
  ENOENT: 'not_found',
  EEXIST: 'already_exists',
  EACCES: 'permission_denied',
  EPERM: 'permission_denied',
  EROFS: 'permission_denied',
  EISDIR: 'invalid_argument',
  ENOTDIR: 'invalid_argument',
  EINVAL: 'invalid_argument',
  ENOTEMPTY: 'failed_precondition',
  ENOSPC: 'resource_exhausted',
  EDQUOT: 'resource_exhausted',
  E2BIG: 'resource_exhausted',
};

/** Anything thrown by a handler, as a Connect error. Unexpected ones say only "internal": the log has the rest. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof MoatError) return new ConnectError(BY_HTTP[err.code] ?? (err.code >= 500 ? 'internal' : 'invalid_argument'), err.message);
  if (err instanceof AgentError) return new ConnectError(BY_ERRNO[err.code] ?? 'unavailable', err.message);
  const fe = err as { validation?: unknown; statusCode?: number; message?: string };
  if (fe.validation || (fe.statusCode && fe.statusCode < 500)) return new ConnectError('invalid_argument', fe.message ?? 'invalid request');
  return new ConnectError('internal', 'internal error: see the server log');
}

export const httpStatus = (code: ConnectCode) => HTTP_STATUS[code];

export function sendUnaryError(reply: FastifyReply, err: ConnectError) {
  return reply.status(HTTP_STATUS[err.code]).type('application/json').send({ code: err.code, message: err.message });
}

/** The one message of a server-streaming request. */
export function readEnvelope(body: unknown): unknown {
  if (!Buffer.isBuffer(body) || body.length < 5) throw new ConnectError('invalid_argument', 'expected one enveloped JSON message');
  if (body[0]! & COMPRESSED) throw new ConnectError('unimplemented', 'compressed messages are not supported');
  const len = body.readUInt32BE(1);
  if (len !== body.length - 5) throw new ConnectError('invalid_argument', `envelope says ${len} bytes, body has ${body.length - 5}`);
  try {
    return JSON.parse(body.subarray(5).toString('utf8'));
  } catch (err) {
    throw new ConnectError('invalid_argument', `malformed JSON message: ${(err as Error).message}`);
  }
}

function envelope(flags: number, message: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

/** A server-streaming response: messages as they come, then the end of the stream (with an error, or not). */
export class ServerStream {
  readonly body = new PassThrough();
  private ended = false;

  /** Closed by the client (it gave up, or its deadline passed). */
  get closed(): boolean {
    return this.ended || this.body.destroyed;
  }

  send(message: unknown): void {
    if (!this.closed) this.body.write(envelope(0, message));
  }

  end(err?: unknown): void {
    if (this.closed) return;
    this.ended = true;
    const e = err === undefined ? undefined : toConnectError(err);
    this.body.end(envelope(END_STREAM, e ? { error: { code: e.code, message: e.message } } : {}));
  }

  /** Answers the request with this stream; errors from here on travel in the end-of-stream message. */
  reply(reply: FastifyReply) {
    return reply.status(200).type(STREAM_CONTENT_TYPE).send(this.body);
  }
}

/** `Connect-Timeout-Ms`: the client's deadline for a call; absent means none. */
export function deadlineMs(header: string | string[] | undefined): number | undefined {
  const v = Number(Array.isArray(header) ? header[0] : header);
  return Number.isInteger(v) && v > 0 ? v : undefined;
}
