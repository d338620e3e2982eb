import type { StatusBody } from './types.js';

/**
 * Every failure the SDK reports, shaped like the server's Kubernetes Status
 * (and core's MoatError): `code` is the HTTP status of the response (0 when
 * no response was received), `reason` the Status reason (`NotFound`,
 * `AlreadyExists`, ...) or a client-side one (`Unavailable`, `Timeout`,
 * `NotSupported`, `ProtocolError`).
 */
export class MoatError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'MoatError';
  }

  /** @deprecated The HTTP status is `code`, as in a Kubernetes Status. */
  get status(): number {
    return this.code;
  }
}

/**
 * A command that could not run (or broke down mid-way) on the exec stream,
 * reported by `{"type":"error"}` rather than by an HTTP status. Separate from
 * MoatError so a CLI can map "program not found" to exit code 127 without
 * confusing it with "sandbox not found".
 */
export class ExecError extends MoatError {
  constructor(reason: string, message: string) {
    super(0, reason, message);
    this.name = 'ExecError';
  }
}

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  408: 'Timeout',
  409: 'Conflict',
  413: 'PayloadTooLarge',
  422: 'Invalid',
  500: 'InternalError',
  502: 'BadGateway',
  503: 'ServiceUnavailable',
};

function isStatusBody(v: unknown): v is StatusBody {
  return typeof v === 'object' && v !== null && (v as { kind?: unknown }).kind === 'Status';
}

/** Map a non-2xx response body to a MoatError, preferring the server's own words. */
export function errorFromResponse(status: number, bodyText: string, what: string): MoatError {
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    body = undefined;
  }
  const fallbackReason = REASONS[status] ?? (status >= 500 ? 'InternalError' : 'Unknown');
  if (isStatusBody(body)) {
    const message = body.message || `${what}: HTTP ${status} ${body.reason ?? fallbackReason}`;
    return new MoatError(status, body.reason || fallbackReason, message, body.details);
  }
  // Not our server (a proxy, or something else on the port): say so, with a bit of the body.
  const snippet = bodyText.trim().slice(0, 200);
  return new MoatError(status, fallbackReason, `${what}: HTTP ${status}${snippet ? `: ${snippet}` : ''}`);
}

/** fetch() rejects with a bare "fetch failed"; the useful part is in `cause`. */
export function networkError(url: string, err: unknown): MoatError {
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  const why = cause?.code ?? cause?.message ?? (err as Error)?.message ?? String(err);
  return new MoatError(0, 'Unavailable', `cannot reach the Moat server at ${url} (${why}): is it running? Start one with \`moat up\``, undefined, {
    cause: err,
  });
}

export function isAbortTimeout(err: unknown): boolean {
  const name = (err as { name?: string })?.name;
  return name === 'TimeoutError' || name === 'AbortError';
}

export function timeoutError(what: string, ms: number): MoatError {
  return new MoatError(0, 'Timeout', `${what} timed out after ${formatSeconds(ms)}`);
}

function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10}s`;
}
