import { lstat, mkdir, open, readdir, readFile, readlink, symlink, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { CliError } from './errors.js';

/**
 * A local directory as a tar (names relative to it): regular files, directories
 * and symlinks. Sockets, devices and FIFOs are skipped with a warning.
 */
// tar-stream's streams are streamx streams: they are only iterated here and
// never handed to node:stream helpers, whose duck typing they do not fully meet.

export async function packDirectory(dir: string, warn: (msg: string) => void = () => {}): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  // Drain while adding entries, or the pack stream stalls on backpressure.
  const drained = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  const add = (header: Partial<tar.Header> & { name: string }, body?: Buffer) =>
    new Promise<void>((resolve, reject) => pack.entry(header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));

  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const name = rel ? `${rel}/${e.name}` : e.name;
      const full = join(dir, name);
      const st = await lstat(full);
      const common = { name, mode: st.mode & 0o7777, mtime: st.mtime };
      if (st.isDirectory()) {
        await add({ ...common, name: `${name}/`, type: 'directory' });
        await walk(name);
      } else if (st.isFile()) {
        await add({ ...common, type: 'file', size: st.size }, await readFile(full));
      } else if (st.isSymbolicLink()) {
        await add({ ...common, type: 'symlink', linkname: await readlink(full) });
      } else {
        warn(`skipping ${full}: not a regular file, directory or symlink`);
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
  await drained;
  return Buffer.concat(chunks);
}

/**
 * Extract a tar from a sandbox into `dest`. The archive is untrusted (anything
 * in the sandbox may have written it), so: no absolute names, no `..`, never
 * write through a symlink (not even one the archive itself just created), no
 * setuid bits, hard links and devices skipped.
 */
export async function extractTar(source: Readable, dest: string, warn: (msg: string) => void = () => {}): Promise<{ files: number }> {
  await mkdir(dest, { recursive: true });
  // No await between piping and iterating: an entry emitted before the
  // iterator listens is lost and the extractor stalls waiting for it.
  const extract = tar.extract();
  source.on('error', (err) => extract.destroy(err));
  source.pipe(extract);
  let files = 0;
  for await (const entry of extract) {
    const h = entry.header;
    const parts = safeParts(h.name);
    if (parts.length === 0) {
      entry.resume();
      continue;
    }
    const target = join(dest, ...parts);
    await ensureParents(dest, parts);
    if (h.type === 'directory') {
      await replaceNonDirectory(target);
      await mkdir(target, { recursive: true });
      entry.resume();
    } else if (h.type === 'file' || h.type === 'contiguous-file') {
      await removeIfLink(target);
      // Mode only applies on creation and is filtered by the umask, as with tar(1) for non-root.
      const file = await open(target, 'w', (h.mode ?? 0o644) & 0o777);
      try {
        for await (const chunk of entry) await file.write(chunk as Buffer);
      } finally {
        await file.close();
      }
      if (h.mtime) await utimes(target, h.mtime, h.mtime);
      files++;
    } else if (h.type === 'symlink' && h.linkname) {
      await removeIfLink(target);
      await unlinkIfExists(target);
      await symlink(h.linkname, target);
      entry.resume();
    } else {
      warn(`skipping ${parts.join('/')}: ${h.type ?? 'unknown'} entries are not extracted`);
      entry.resume();
    }
  }
  return { files };
}

/** Archive entry name → path segments, refusing anything that could leave the destination. */
export function safeParts(name: string): string[] {
  if (name.startsWith('/') || name.includes('\0')) throw new CliError(`refusing archive entry "${name}": absolute path`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new CliError(`refusing archive entry "${name}": contains ".."`);
  return parts;
}

/** Every existing ancestor of the entry inside dest must be a real directory. */
async function ensureParents(dest: string, parts: string[]): Promise<void> {
  let dir = dest;
  for (const p of parts.slice(0, -1)) {
    dir = join(dir, p);
    const st = await lstat(dir).catch(() => undefined);
    if (!st) await mkdir(dir);
    else if (st.isSymbolicLink()) throw new CliError(`refusing to extract through the symlink ${dir}`);
    else if (!st.isDirectory()) throw new CliError(`cannot extract into ${dir}: it is not a directory`);
  }
}

async function removeIfLink(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st?.isSymbolicLink()) await unlink(path);
}

async function unlinkIfExists(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st && !st.isDirectory()) await unlink(path);
}

async function replaceNonDirectory(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st && !st.isDirectory()) await unlink(path);
}
