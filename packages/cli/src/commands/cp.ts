import { MoatError, type Entry, type Sandbox } from '@moat/sdk';
import type { Command } from 'commander';
import { stat, readFile, writeFile, mkdir } from 'node:fs/promises';
import { basename, join, posix, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseRemotePath, type RemotePath } from '../args.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { readAll } from '../streams.js';
import { extractTar, packDirectory } from '../tar.js';

export function registerCp(program: Command, ctx: Context): void {
  program
    .command('cp')
    .description('copy files or directories between this machine and a sandbox (NAME:/path on one side; - is stdin/stdout)')
    .argument('<src>')
    .argument('<dst>')
    .action(async (src: string, dst: string) => {
      const [from, to] = [parseRemotePath(src), parseRemotePath(dst)];
      if (!!from === !!to) throw new CliError('exactly one of SRC and DST must be in a sandbox, written NAME:/path');
      const moat = await ctx.moat();
      if (to) await upload(ctx, src, await moat.sandboxes.get(to.sandbox), to);
      else await download(ctx, await moat.sandboxes.get(from!.sandbox), from!, dst);
    });
}

async function remoteStat(sbx: Sandbox, path: string): Promise<Entry | undefined> {
  try {
    return await sbx.files.stat(path);
  } catch (err) {
    if (err instanceof MoatError && err.code === 404) return undefined;
    throw err;
  }
}

/** Like cp(1): copying into an existing directory puts the source inside it. */
async function upload(ctx: Context, src: string, sbx: Sandbox, to: RemotePath): Promise<void> {
  if (src === '-') {
    if (to.path.endsWith('/')) throw new CliError('with - (stdin) as source the destination must be a file path');
    await sbx.files.write(to.path, await readAll(ctx.io.stdin));
    return;
  }
  const local = resolve(ctx.io.cwd, src);
  const st = await stat(local);
  const existing = await remoteStat(sbx, to.path);
  const into = existing?.type === 'dir' || to.path.endsWith('/');
  const target = into ? posix.join(to.path, basename(local)) : to.path;
  if (st.isDirectory()) {
    await sbx.files.mkdir(target, { parents: true });
    await sbx.files.uploadTar(target, await packDirectory(local, (m) => ctx.err(`warning: ${m}\n`)));
  } else if (st.isFile()) {
    await sbx.files.write(target, await readFile(local), { mode: st.mode & 0o777 });
  } else {
    throw new CliError(`${src}: not a regular file or directory`);
  }
}

async function download(ctx: Context, sbx: Sandbox, from: RemotePath, dst: string): Promise<void> {
  const entry = await sbx.files.stat(from.path);
  const isDir = entry.type === 'dir' || (entry.type === 'symlink' && (await isDirLink(sbx, from.path)));
  if (dst === '-') {
    // A directory goes to stdout as a tar, like `docker cp CONTAINER:/dir -`.
    if (isDir) await pipeline(await sbx.files.downloadTarStream(from.path), ctx.io.stdout, { end: false });
    else ctx.out(await sbx.files.read(from.path));
    return;
  }
  const local = resolve(ctx.io.cwd, dst);
  const localStat = await stat(local).catch(() => undefined);
  const into = localStat?.isDirectory() || dst.endsWith('/');
  const name = posix.basename(from.path);
  const target = into && name ? join(local, name) : local;
  if (isDir) {
    await extractTar(await sbx.files.downloadTarStream(from.path), target, (m) => ctx.err(`warning: ${m}\n`));
  } else {
    if (into) await mkdir(local, { recursive: true });
    await writeFile(target, await sbx.files.read(from.path), { mode: parseInt(entry.mode, 8) & 0o777 || 0o644 });
  }
}

/** stat does not follow a final symlink; listing through it tells whether it leads to a directory. */
async function isDirLink(sbx: Sandbox, path: string): Promise<boolean> {
  try {
    await sbx.files.list(path);
    return true;
  } catch {
    return false;
  }
}
