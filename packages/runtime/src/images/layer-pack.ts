import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import tar from 'tar-stream';

/**
 * A stored layer's tree back as an uncompressed tar (for a builder that takes
 * OCI layouts): ids mapped back with `mapId`, overlayfs whiteouts as OCI ones.
 * Entries are sorted, so the same tree gives the same diff id.
 */
export async function packLayer(
  dir: string,
  out: Writable,
  o: { mapId?: (id: number) => number; opaque?: string[] } = {},
): Promise<{ diffId: string; size: number }> {
  const mapId = o.mapId ?? ((id: number) => id);
  const opaque = new Set(o.opaque ?? []);
  const pack = tar.pack();
  const hash = createHash('sha256');
  let size = 0;
  const written = (async () => {
    for await (const chunk of pack as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.length;
      if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  })();
  const add = (header: Partial<tar.Header> & { name: string }, body?: AsyncIterable<Buffer>) =>
    new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (!body) return void pack.entry(header, Buffer.alloc(0), done);
      const entry = pack.entry(header, done);
      void (async () => {
        try {
          for await (const chunk of body) if (!entry.write(chunk)) await new Promise<void>((r) => entry.once('drain', () => r()));
          entry.end(undefined);
        } catch (err) {
          entry.destroy(err as Error);
        }
      })();
    });
  const links = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(dir, rel))).sort();
    if (opaque.has(rel)) await add({ name: rel ? `${rel}/.wh..wh..opq` : '.wh..wh..opq', type: 'file', size: 0, mode: 0o644 });
    for (const n of names) {
      const name = rel ? `${rel}/${n}` : n;
      const full = join(dir, name);
      const st = await lstat(full);
      const common = { name, mode: st.mode & 0o7777, uid: mapId(st.uid), gid: mapId(st.gid), mtime: st.mtime };
      if (st.isDirectory()) {
        await add({ ...common, name: `${name}/`, type: 'directory' });
        await walk(name);
      } else if (st.isCharacterDevice() && st.rdev === 0) {
        await add({ ...common, name: rel ? `${rel}/.wh.${n}` : `.wh.${n}`, type: 'file', size: 0 });
      } else if (st.isFile() && st.nlink > 1 && links.has(`${st.dev}:${st.ino}`)) {
        await add({ ...common, type: 'link', linkname: links.get(`${st.dev}:${st.ino}`)! });
      } else if (st.isFile()) {
        if (st.nlink > 1) links.set(`${st.dev}:${st.ino}`, name);
        await add({ ...common, type: 'file', size: st.size }, createReadStream(full));
      } else if (st.isSymbolicLink()) {
        await add({ ...common, type: 'symlink', linkname: await readlink(full) });
      } else if (st.isFIFO()) {
        await add({ ...common, type: 'fifo' });
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        const devmajor = (st.rdev >> 8) & 0xfff;
        const devminor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
        await add({ ...common, type: st.isBlockDevice() ? 'block-device' : 'character-device', devmajor, devminor });
      }
    }
  };
  try {
    await walk('');
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    throw err;
  }
  await written;
  return { diffId: `sha256:${hash.digest('hex')}`, size };
}
