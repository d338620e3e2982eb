import type { Command } from 'commander';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, humanAge, humanBytes, render } from '../output.js';

/** `moat backup create|list|restore|delete`: volume snapshots in the server's backup store (docs/lifecycle.md). */
export function registerBackup(program: Command, ctx: Context): void {
  const backup = program.command('backup').alias('backups').description("backups of volumes in the server's object store");
  backup
    .command('create')
    .description('back up a volume (or a sandbox\'s volume): consistent, zstd-compressed, SHA-256 checksummed')
    .option('--volume <name>', 'the volume')
    .option('--sandbox <name>', "the sandbox whose volume to back up")
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { volume?: string; sandbox?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      if (!opts.volume === !opts.sandbox) throw new CliError('give --volume NAME or --sandbox NAME');
      const b = await (await ctx.moat()).backups.create(opts.volume ? { volume: opts.volume } : { sandbox: opts.sandbox! });
      if (format) return void ctx.out(render(b, format));
      ctx.out(`backup ${b.id} of volume ${b.volume} created: ${humanBytes(b.sizeBytes)} → ${humanBytes(b.compressedBytes)} in ${b.durationMs ?? 0} ms, sha256 ${b.sha256}\n`);
    });
  backup
    .command('list', { isDefault: true })
    .alias('ls')
    .option('--volume <name>', 'only the backups of this volume')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { volume?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).backups.list(opts.volume);
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(formatTable(['ID', 'VOLUME', 'SIZE', 'COMPRESSED', 'AGE'], items.map((b) => [b.id, b.volume, humanBytes(b.sizeBytes), humanBytes(b.compressedBytes), humanAge(b.createdAt, now)])));
    });
  backup
    .command('restore <id>')
    .description('make a new volume from a backup (its checksum is verified first); attach it to a new sandbox')
    .requiredOption('--volume <name>', 'the new volume')
    .action(async (id: string, opts: { volume: string }) => {
      const v = await (await ctx.moat()).backups.restore(id, opts.volume);
      ctx.out(`volume ${v.name} (${v.size}) restored from ${id} in ${v.durationMs} ms\n`);
    });
  backup
    .command('delete <id>')
    .alias('rm')
    .action(async (id: string) => {
      await (await ctx.moat()).backups.delete(id);
      ctx.out(`backup ${id} deleted\n`);
    });
}
