import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { MEDIA, ingestLayer } from '@moat/runtime';

/**
 * A build context arrives as a tar from a client: it is unpacked with the
 * layer unpacker's checks (nothing outside the directory, no device nodes,
 * no setuid files), owned by root as the builder expects.
 */
export async function unpackContext(tarFile: string, dest: string): Promise<void> {
  const digest = await sha256File(tarFile);
  const gzip = await isGzip(tarFile);
  await ingestLayer(createReadStream(tarFile), {
    mediaType: gzip ? MEDIA.ociLayerGzip : MEDIA.ociLayer,
    digest,
    dest,
    policy: { devices: false, setuid: false },
  });
}

/** A docker config.json with the namespace's logins, for the builder's own pulls (FROM a registry image). */
export async function writeAuthFile(path: string, logins: { registry: string; username: string; password: string }[]): Promise<void> {
  const auths = Object.fromEntries(logins.map((l) => [l.registry, { auth: Buffer.from(`${l.username}:${l.password}`).toString('base64') }]));
  await writeFile(path, JSON.stringify({ auths }), { mode: 0o600 });
}

async function isGzip(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    await fh.read(b, 0, 2, 0);
    return b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(`sha256:${h.digest('hex')}`))
      .on('error', reject);
  });
}
