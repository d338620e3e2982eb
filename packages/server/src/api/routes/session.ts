import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Type, type Static } from '@sinclair/typebox';
import { MOAT_API_VERSION, MoatError, unauthorized } from '@moat/core';
import type {} from '@fastify/cookie'; // its request.cookies and reply.setCookie types
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authenticate, authenticateKeyId, type Principal } from '../../auth/keys.js';
import { DEFAULT_AGENT } from '../../identity/identity.js';
import type { ApiContext } from '../context.js';

/**
 * The web portal's sign-in: an API key, given once, opens a session whose id
 * travels in an HttpOnly, SameSite=Strict cookie. The server keeps only the
 * id's hash and the key's id, and every request through the session checks
 * that key again, so revoking (or expiring) the key ends its sessions.
 *
 * Cookies are sent by the browser on its own, so a cookie-authenticated
 * request that changes anything must also carry the session's CSRF token in
 * `X-Moat-CSRF` (a header no cross-site form or link can send, and that a
 * cross-site script cannot read), and any `Origin` it carries must be this
 * server's. A WebSocket upgrade (the terminal) must come from this origin.
 */
export const SESSION_PATH = `/apis/${MOAT_API_VERSION}/session`;
export const SESSION_COOKIE = 'moat_session';
export const CSRF_HEADER = 'x-moat-csrf';
/** How long a session lasts at most; the key's own expiry and revocation end it sooner. */
export const SESSION_TTL_MS = 12 * 60 * 60 * 1000;

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);
const hash = (id: string) => createHash('sha256').update(id).digest('hex');

interface Session {
  idHash: string;
  csrf: string;
  expiresAt: string;
}

const forbidden = (message: string) => new MoatError(403, 'Forbidden', message);

function sameString(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** An `Origin` header, when there is one, must name this server (as the request reached it). */
function checkOrigin(req: FastifyRequest, required: boolean): void {
  const origin = req.headers.origin;
  if (origin === undefined) {
    if (required) throw forbidden('a cookie-authenticated WebSocket must come from the portal (no Origin header)');
    return;
  }
  let host: string;
  try {
    host = new URL(origin).host;
  } catch {
    throw forbidden(`cross-origin request refused (Origin "${origin}")`);
  }
  if (origin === 'null' || host !== req.headers.host) throw forbidden(`cross-origin request refused (Origin "${origin}" is not this server)`);
}

export class PortalSessions {
  /** The sessions requests came through, for the routes that need to know. */
  private readonly of = new WeakMap<FastifyRequest, Session>();
  private lastSweep = 0;

  constructor(private readonly ctx: ApiContext) {}

  /**
   * The principal of a request that carries the session cookie and no API key,
   * with the CSRF and origin rules applied; undefined when the request has no
   * session cookie or presents a key (a key always wins).
   */
  async authenticate(req: FastifyRequest, keyPresented: boolean): Promise<Principal | undefined> {
    const id = req.cookies?.[SESSION_COOKIE];
    if (keyPresented || !id) return undefined;
    const row = await this.ctx.store.db.selectFrom('portal_sessions').selectAll().where('id_hash', '=', hash(id)).executeTakeFirst();
    if (!row || Date.parse(row.expires_at) <= Date.now()) throw unauthorized('the portal session has ended: sign in again');
    const upgrade = (req.headers.upgrade ?? '').toLowerCase() === 'websocket';
    checkOrigin(req, upgrade);
    if (!SAFE.has(req.method)) {
      const token = req.headers[CSRF_HEADER];
      if (typeof token !== 'string' || !sameString(token, row.csrf)) {
        throw forbidden(`a cookie-authenticated ${req.method} needs the session's CSRF token in the X-Moat-CSRF header`);
      }
    }
    const principal = await authenticateKeyId(this.ctx.store, this.ctx.identity, row.key_id).catch(async (err: unknown) => {
      await this.ctx.store.db.deleteFrom('portal_sessions').where('id_hash', '=', row.id_hash).execute();
      throw err instanceof MoatError && err.code === 401 ? unauthorized(`the portal session has ended: ${err.message}`) : err;
    });
    this.of.set(req, { idHash: row.id_hash, csrf: row.csrf, expiresAt: row.expires_at });
    return principal;
  }

  session(req: FastifyRequest): Session | undefined {
    return this.of.get(req);
  }

  async open(principal: Principal): Promise<{ id: string; session: Session }> {
    await this.sweep();
    const id = randomBytes(32).toString('base64url');
    const session = { idHash: hash(id), csrf: randomBytes(24).toString('base64url'), expiresAt: new Date(Date.now() + SESSION_TTL_MS).toISOString() };
    await this.ctx.store.db
      .insertInto('portal_sessions')
      .values({ id_hash: session.idHash, key_id: principal.keyId, csrf: session.csrf, created_at: new Date().toISOString(), expires_at: session.expiresAt })
      .execute();
    return { id, session };
  }

  async close(session: Session): Promise<void> {
    await this.ctx.store.db.deleteFrom('portal_sessions').where('id_hash', '=', session.idHash).execute();
  }

  /** Expired sessions are removed now and then, when someone signs in. */
  private async sweep(): Promise<void> {
    if (Date.now() - this.lastSweep < 60_000) return;
    this.lastSweep = Date.now();
    await this.ctx.store.db.deleteFrom('portal_sessions').where('expires_at', '<=', new Date().toISOString()).execute();
  }
}

const SignIn = Type.Object({ apiKey: Type.String({ minLength: 1, maxLength: 512 }) }, { additionalProperties: false });

const cookieOptions = (req: FastifyRequest) => ({ path: '/', httpOnly: true, sameSite: 'strict' as const, secure: req.protocol === 'https' });

function whoami(p: Principal, session: Session | undefined) {
  const namespace = [...p.namespaces].find(([, agent]) => agent === (p.agent ?? DEFAULT_AGENT))?.[0];
  return {
    user: p.user,
    role: p.role,
    ...(p.agent ? { agent: p.agent } : {}),
    keyId: p.keyId,
    namespace,
    namespaces: [...p.namespaces.keys()],
    ...(session ? { csrfToken: session.csrf, expiresAt: session.expiresAt } : {}),
  };
}

export function sessionRoutes(app: FastifyInstance, ctx: ApiContext, sessions: PortalSessions) {
  const tags = ['session'];

  app.post(
    SESSION_PATH,
    {
      config: { ownAuth: true },
      schema: {
        tags,
        security: [],
        summary: 'Sign in to the portal with an API key: sets an HttpOnly session cookie; send the answered csrfToken as X-Moat-CSRF on changes',
        body: SignIn,
      },
    },
    async (req, reply: FastifyReply) => {
      // Against login CSRF (signing a victim's browser in as someone else): a form cannot send this header.
      checkOrigin(req, false);
      if (req.headers[CSRF_HEADER] === undefined) throw forbidden('signing in needs an X-Moat-CSRF header (any value)');
      const principal = await authenticate(ctx.store, ctx.identity, (req.body as Static<typeof SignIn>).apiKey);
      req.principal = principal; // the audit event names who signed in
      const { id, session } = await sessions.open(principal);
      void reply.setCookie(SESSION_COOKIE, id, { ...cookieOptions(req), expires: new Date(session.expiresAt) });
      return reply.status(201).send(whoami(principal, session));
    },
  );

  app.get(SESSION_PATH, { schema: { tags, summary: 'Who the session (or key) is, with the CSRF token of a cookie session' } }, async (req) =>
    whoami(req.principal, sessions.session(req)),
  );

  app.delete(SESSION_PATH, { schema: { tags, summary: 'Sign out: ends the session and clears its cookie' } }, async (req, reply) => {
    const session = sessions.session(req);
    if (session) await sessions.close(session);
    void reply.clearCookie(SESSION_COOKIE, cookieOptions(req));
    return reply.status(204).send();
  });
}
