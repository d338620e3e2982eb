import { MoatError, statusBody } from '@moat/core';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';

/** Every failure leaves as a Kubernetes Status; unexpected ones carry the request id to find in the log. */
export function errorHandler(err: FastifyError | MoatError | Error, req: FastifyRequest, reply: FastifyReply) {
  const e = toMoatError(err, req);
  if (e.code >= 500) req.log.error({ err }, 'request failed');
  else req.log.debug({ err: e.message }, 'request rejected');
  void reply.status(e.code).send(statusBody(e));
}

export function toMoatError(err: unknown, req: FastifyRequest): MoatError {
  if (err instanceof MoatError) return err;
  const fe = err as FastifyError;
  if (fe.validation) {
    const v = fe.validation[0];
    const where = `${fe.validationContext ?? 'body'}${v?.instancePath ?? ''}`;
    const extra = v?.keyword === 'additionalProperties' ? ` "${(v.params as { additionalProperty?: string }).additionalProperty}"` : '';
    return new MoatError(400, 'BadRequest', `invalid request: ${where} ${v?.message ?? fe.message}${extra}`);
  }
  if (fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || fe instanceof SyntaxError) {
    return new MoatError(400, 'BadRequest', `malformed JSON body: ${fe.message}`);
  }
  if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new MoatError(413, 'PayloadTooLarge', 'request body is too large');
  if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new MoatError(415, 'UnsupportedMediaType', fe.message);
  if (fe.statusCode && fe.statusCode < 500) return new MoatError(fe.statusCode, 'BadRequest', fe.message);
  return new MoatError(500, 'InternalError', `internal error (request ${req.id}): see the server log`);
}
