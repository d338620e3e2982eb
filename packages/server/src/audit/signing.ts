import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';

/**
 * Ed25519 signatures over audit checkpoints. The private key is a file in the
 * data dir (0600), outside the store: whoever can only write the database
 * cannot make a rewritten chain match a checkpoint.
 */
export class CheckpointSigner {
  private readonly publicKey: KeyObject;

  private constructor(private readonly privateKey: KeyObject) {
    this.publicKey = createPublicKey(privateKey);
  }

  static async open(file: string): Promise<CheckpointSigner> {
    const pem = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (pem) return new CheckpointSigner(createPrivateKey(pem));
    const { privateKey } = generateKeyPairSync('ed25519');
    // 'wx': two servers starting on one data dir must not each write a key.
    await writeFile(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    return new CheckpointSigner(privateKey);
  }

  sign(seq: number, hash: string): string {
    return sign(null, message(seq, hash), this.privateKey).toString('base64');
  }

  verify(seq: number, hash: string, signature: string): boolean {
    return verify(null, message(seq, hash), this.publicKey, Buffer.from(signature, 'base64'));
  }
}

const message = (seq: number, hash: string) => Buffer.from(`moat audit checkpoint ${seq} ${hash}`);
