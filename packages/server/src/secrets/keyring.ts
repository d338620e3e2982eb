import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { conflict } from '@moat/core';

export interface Sealed {
  key_id: string;
  nonce: string;
  /** base64 of ciphertext followed by the 16-byte GCM tag. */
  ciphertext: string;
}

interface Key {
  id: string;
  bytes: Buffer;
}

const FILE = 'master.key';
/** A rotation writes the new key here first; a crash leaves it for the next start to finish with. */
const NEXT = 'master.key.next';
const PREVIOUS = 'master.key.previous';

function parseKey(text: string, from: string): Key {
  const bytes = Buffer.from(text.trim(), 'base64');
  if (bytes.length !== 32)
    throw new Error(`${from}: a master key is 32 random bytes, base64-encoded (e.g. \`openssl rand -base64 32\`); got ${bytes.length} bytes`);
  return { id: createHash('sha256').update(bytes).digest('hex').slice(0, 16), bytes };
}

const readIfThere = (file: string) =>
  readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });

/**
 * AES-256-GCM under a master key from $MOAT_MASTER_KEY or `<data dir>/master.key`
 * (made on first start, 0600). Older keys ($MOAT_MASTER_KEY_PREVIOUS, or the
 * files a rotation leaves while it runs) only decrypt; the caller re-encrypts
 * what they hold and then calls `retire`.
 */
export class Keyring {
  private constructor(
    private current: Key,
    private readonly keys: Map<string, Key>,
    /** Undefined when the key comes from the environment: the server cannot change that. */
    private readonly dir: string | undefined,
  ) {}

  static async load(dataDir: string): Promise<Keyring> {
    const env = process.env;
    if (env.MOAT_MASTER_KEY) {
      const current = parseKey(env.MOAT_MASTER_KEY, 'MOAT_MASTER_KEY');
      const previous = (env.MOAT_MASTER_KEY_PREVIOUS ?? '')
        .split(',')
        .filter(Boolean)
        .map((k) => parseKey(k, 'MOAT_MASTER_KEY_PREVIOUS'));
      return new Keyring(current, new Map([current, ...previous].map((k) => [k.id, k])), undefined);
    }
    const file = join(dataDir, FILE);
    let text = await readIfThere(file);
    const next = await readIfThere(join(dataDir, NEXT));
    if (text === undefined && next !== undefined) {
      await rename(join(dataDir, NEXT), file); // a rotation stopped between its two renames
      text = next;
    }
    if (text === undefined) {
      text = randomBytes(32).toString('base64') + '\n';
      await writeFile(file, text, { mode: 0o600, flag: 'wx' });
    }
    const current = parseKey(text, file);
    const others = [await readIfThere(join(dataDir, NEXT)), await readIfThere(join(dataDir, PREVIOUS))]
      .filter((t) => t !== undefined)
      .map((t) => parseKey(t, dataDir));
    return new Keyring(current, new Map([current, ...others].map((k) => [k.id, k])), dataDir);
  }

  get currentId(): string {
    return this.current.id;
  }

  seal(plaintext: string, aad: string): Sealed {
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.current.bytes, nonce).setAAD(Buffer.from(aad));
    const body = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
    return { key_id: this.current.id, nonce: nonce.toString('base64'), ciphertext: body.toString('base64') };
  }

  /** `aad` binds a ciphertext to its row, so one secret's ciphertext cannot stand in for another's. */
  open(s: Sealed, aad: string): string {
    const key = this.keys.get(s.key_id);
    if (!key) throw new Error(`secret sealed with master key ${s.key_id}, which this server does not have (set MOAT_MASTER_KEY_PREVIOUS?)`);
    const body = Buffer.from(s.ciphertext, 'base64');
    const d = createDecipheriv('aes-256-gcm', key.bytes, Buffer.from(s.nonce, 'base64')).setAAD(Buffer.from(aad));
    d.setAuthTag(body.subarray(body.length - 16));
    return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]).toString('utf8');
  }

  /**
   * Makes a new key current: it is written beside the old one, `reseal` moves
   * every secret to it (one transaction), then the files are swapped.
   */
  async rotate(reseal: () => Promise<number>): Promise<number> {
    if (!this.dir)
      throw conflict(
        'the master key comes from MOAT_MASTER_KEY: restart with the new key in MOAT_MASTER_KEY and the old one in MOAT_MASTER_KEY_PREVIOUS; secrets are re-encrypted at start',
      );
    const text = randomBytes(32).toString('base64') + '\n';
    await writeFile(join(this.dir, NEXT), text, { mode: 0o600 });
    const next = parseKey(text, NEXT);
    const old = this.current;
    this.keys.set(next.id, next);
    this.current = next;
    try {
      const n = await reseal();
      await rename(join(this.dir, FILE), join(this.dir, PREVIOUS));
      await rename(join(this.dir, NEXT), join(this.dir, FILE));
      await this.retire();
      return n;
    } catch (err) {
      this.current = old;
      throw err;
    }
  }

  /** Forgets every key but the current one, once nothing is sealed with them. */
  async retire(): Promise<void> {
    for (const id of this.keys.keys()) if (id !== this.current.id) this.keys.delete(id);
    if (this.dir) for (const f of [NEXT, PREVIOUS]) await unlink(join(this.dir, f)).catch(() => {});
  }
}
