import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import type { Sandbox } from '@moat/core';

/** What a sandbox token names. */
export interface TokenClaims {
  uid: string;
  namespace: string;
  sandbox: string;
  user: string;
  agent: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

const PREFIX = 'moat_sbx_';

/**
 * Sandbox tokens: HMAC-signed (key in the data dir, 0600), short-lived, naming
 * (user, agent, sandbox). A token alone is not enough: the gateway also checks
 * that it arrives from that sandbox's own address and that the sandbox still
 * exists, so a deleted sandbox's tokens die with it.
 */
export class SandboxTokens {
  private constructor(
    private readonly key: Buffer,
    readonly ttlSeconds: number,
  ) {}

  static async open(file: string, ttlSeconds: number): Promise<SandboxTokens> {
    const saved = await readFile(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (saved?.length === 32) return new SandboxTokens(saved, ttlSeconds);
    const key = randomBytes(32);
    await writeFile(file, key, { mode: 0o600 });
    return new SandboxTokens(key, ttlSeconds);
  }

  mint(s: Sandbox, owner: { user: string; agent: string }): string {
    const claims: TokenClaims = {
      uid: s.metadata.uid,
      namespace: s.metadata.namespace,
      sandbox: s.metadata.name,
      ...owner,
      exp: Math.floor(Date.now() / 1000) + this.ttlSeconds,
    };
    const body = Buffer.from(JSON.stringify(claims)).toString('base64url');
    return `${PREFIX}${body}.${this.sign(body)}`;
  }

  /** The claims of a well-signed, unexpired token; a string saying why not otherwise. */
  verify(token: string): TokenClaims | string {
    const m = token.startsWith(PREFIX) ? token.slice(PREFIX.length).split('.') : [];
    if (m.length !== 2) return 'not a sandbox token';
    const [body, sig] = m as [string, string];
    const want = Buffer.from(this.sign(body));
    if (want.length !== sig.length || !timingSafeEqual(want, Buffer.from(sig))) return 'the sandbox token has a bad signature';
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as TokenClaims;
    if (claims.exp * 1000 < Date.now()) return `the sandbox token expired at ${new Date(claims.exp * 1000).toISOString()}`;
    return claims;
  }

  private sign(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url');
  }
}
