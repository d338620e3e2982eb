import type { Entry } from '@moat/sdk';
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Context } from '../context.js';
import { checkFormat, formatTable, humanBytes, render } from '../output.js';
import { readAll } from '../streams.js';

export function registerFiles(program: Command, ctx: Context): void {
  const files = program.command('files').description('read and write files in a sandbox');
  const sandbox = async (name: string) => (await ctx.moat()).sandboxes.get(name);

  files
    .command('ls')
    .description('list a directory')
    .argument('<name>', 'sandbox')
    .argument('[path]', 'absolute path', '/')
    .option('-o, --output <format>', 'json or yaml')
    .option('-u, --user <user>', 'whose permissions apply (default root)')
    .action(async (name: string, path: string, opts: { output?: string; user?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await sandbox(name)).files.list(path, { user: opts.user });
      ctx.out(format ? render({ items }, format) : entriesTable(items));
    });

  files
    .command('cat')
    .description('print a file')
    .argument('<name>', 'sandbox')
    .argument('<path>', 'absolute path')
    .option('-u, --user <user>', 'whose permissions apply (default root)')
    .action(async (name: string, path: string, opts: { user?: string }) => {
      ctx.out(await (await sandbox(name)).files.read(path, { user: opts.user }));
    });

  files
    .command('write')
    .description('write a file from stdin or --from FILE (parent directories are created)')
    .argument('<name>', 'sandbox')
    .argument('<path>', 'absolute path')
    .option('--from <file>', 'local file to upload (default: stdin)')
    .option('--mode <mode>', 'octal permissions, e.g. 0755')
    .option('-u, --user <user>', 'owner and permissions to use (default root)')
    .action(async (name: string, path: string, opts: { from?: string; mode?: string; user?: string }) => {
      const data = opts.from === undefined || opts.from === '-' ? await readAll(ctx.io.stdin) : await readFile(resolve(ctx.io.cwd, opts.from));
      await (await sandbox(name)).files.write(path, data, { mode: opts.mode, user: opts.user });
    });

  files
    .command('rm')
    .description('remove a file, or a directory with -r')
    .argument('<name>', 'sandbox')
    .argument('<path>', 'absolute path')
    .option('-r, --recursive', 'remove a directory and its contents')
    .option('-u, --user <user>', 'whose permissions apply (default root)')
    .action(async (name: string, path: string, opts: { recursive?: boolean; user?: string }) => {
      await (await sandbox(name)).files.remove(path, { recursive: !!opts.recursive, user: opts.user });
    });

  files
    .command('mkdir')
    .description('create a directory and its missing parents')
    .argument('<name>', 'sandbox')
    .argument('<path>', 'absolute path')
    .option('-u, --user <user>', 'owner to use (default root)')
    .action(async (name: string, path: string, opts: { user?: string }) => {
      await (await sandbox(name)).files.mkdir(path, { parents: true, user: opts.user });
    });
}

export function entriesTable(items: Entry[]): string {
  return formatTable(
    ['MODE', 'SIZE', 'MODIFIED', 'NAME'],
    items.map((e) => [
      `${e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : '-'}${e.mode}`,
      e.type === 'dir' ? '' : humanBytes(e.size),
      e.mtime ? e.mtime.replace(/\.\d+Z$/, 'Z') : '',
      e.type === 'symlink' && e.target ? `${e.name} -> ${e.target}` : e.type === 'dir' ? `${e.name}/` : e.name,
    ]),
  );
}
