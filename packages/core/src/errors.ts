/** An error that maps to an HTTP status (`code`) and a Kubernetes-style Status reason; the SDK's MoatError has the same fields. */
export class MoatError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'MoatError';
  }
}

export const badRequest = (msg: string, details?: Record<string, unknown>) => new MoatError(400, 'BadRequest', msg, details);
export const notFound = (msg: string, details?: Record<string, unknown>) => new MoatError(404, 'NotFound', msg, details);
export const conflict = (msg: string, details?: Record<string, unknown>) => new MoatError(409, 'Conflict', msg, details);
export const alreadyExists = (msg: string, details?: Record<string, unknown>) => new MoatError(409, 'AlreadyExists', msg, details);
export const invalid = (msg: string, details?: Record<string, unknown>) => new MoatError(422, 'Invalid', msg, details);
export const tooLarge = (msg: string) => new MoatError(413, 'PayloadTooLarge', msg);
export const unauthorized = (msg: string) => new MoatError(401, 'Unauthorized', msg);
export const forbidden = (msg: string) => new MoatError(403, 'Forbidden', msg);
export const timeout = (msg: string) => new MoatError(408, 'Timeout', msg);

/** Kubernetes `Status` body for an error response. */
export function statusBody(err: MoatError) {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    status: 'Failure',
    code: err.code,
    reason: err.reason,
    message: err.message,
    ...(err.details ? { details: err.details } : {}),
  };
}
