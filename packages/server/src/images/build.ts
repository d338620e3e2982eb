import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { MoatError } from '@moat/core';
import { MEDIA, ingestLayer, isGzip } from '@moat/runtime';

/**
 * A build context arrives as a tar from a client: it is unpacked with the
 * layer unpacker's checks (nothing outside the directory, no device nodes,
 * no setuid files), owned by root as the builder expects.
 */
export async function unpackContext(tarFile: string, dest: string): Promise<void> {
  await ingestLayer(createReadStream(tarFile), {
    mediaType: (await isGzip(tarFile)) ? MEDIA.ociLayerGzip : MEDIA.ociLayer,
    dest,
    policy: { devices: false, setuid: false },
  }).catch((err: unknown) => {
    if (err instanceof MoatError && err.reason !== 'UnsafeLayer') throw err;
    throw new MoatError(400, 'BadContext', `the build context is refused: ${(err as Error).message} (send a tar of the directory, gzip or not)`);
  });
}

/** A docker config.json with the namespace's logins, for the builder's own pulls (FROM a registry image). */
export async function writeAuthFile(path: string, logins: { registry: string; username: string; password: string }[]): Promise<void> {
  const auths = Object.fromEntries(logins.map((l) => [l.registry, { auth: Buffer.from(`${l.username}:${l.password}`).toString('base64') }]));
  await writeFile(path, JSON.stringify({ auths }), { mode: 0o600 });
}
