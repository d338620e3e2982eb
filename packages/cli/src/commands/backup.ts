import type { Command } from 'commander';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, humanAge, humanBytes, render } from '../output.js';

/** `moat backup create|list|restore|delete`: snapshots of volumes and sandboxes' writable layers in the server's backup store (docs/lifecycle.md). */

const of = (b: { kind: string; volume?: string; sandbox?: string }) => (b.kind === 'rootfs' ? `sandbox ${b.sandbox}'s writable layer` : `volume ${b.volume}`);
export function registerBackup(program: Command, ctx: Context): void {
  const backup = program.command('backup').alias('backups').description("backups of volumes and sandboxes' writable layers in the server's object store");
  backup
    .command('create')
    .description(
      "back up a volume, a sandbox's volume, or (--sandbox NAME --rootfs) a sandbox's writable layer: consistent, zstd-compressed, SHA-256 checksummed",
    )
    .option('--volume <name>', 'the volume')
    .option('--sandbox <name>', 'the sandbox whose volume (or, with --rootfs, writable layer) to back up')
    .option('--rootfs', 'with --sandbox: its writable layer (what it changed outside its volume), not its volume')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { volume?: string; sandbox?: string; rootfs?: boolean; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      if (!opts.volume === !opts.sandbox) throw new CliError('give --volume NAME or --sandbox NAME');
      if (opts.rootfs && !opts.sandbox) throw new CliError('--rootfs backs up a sandbox: give --sandbox NAME --rootfs');
      const b = await (
        await ctx.moat()
      ).backups.create(opts.volume ? { volume: opts.volume } : { sandbox: opts.sandbox!, ...(opts.rootfs ? { rootfs: true } : {}) });
      if (format) return void ctx.out(render(b, format));
      ctx.out(
        `backup ${b.id} of ${of(b)} created: ${humanBytes(b.sizeBytes)} → ${humanBytes(b.compressedBytes)} in ${b.durationMs ?? 0} ms, sha256 ${b.sha256}\n`,
      );
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
      ctx.out(
        formatTable(
          ['ID', 'KIND', 'SOURCE', 'SIZE', 'COMPRESSED', 'AGE'],
          items.map((b) => [
            b.id,
            b.kind,
            (b.kind === 'rootfs' ? b.sandbox : b.volume) ?? '',
            humanBytes(b.sizeBytes),
            humanBytes(b.compressedBytes),
            humanAge(b.createdAt, now),
          ]),
        ),
      );
    });
  backup
    .command('restore <id>')
    .description('a volume backup into a new volume (--volume), or a writable-layer backup into a new sandbox (--sandbox); the checksum is verified first')
    .option('--volume <name>', 'the new volume (a volume backup); attach it to a new sandbox')
    .option('--sandbox <name>', "the new sandbox (a --rootfs backup): the backed-up sandbox's spec and image, its writable layer restored")
    .action(async (id: string, opts: { volume?: string; sandbox?: string }) => {
      if (!opts.volume === !opts.sandbox) throw new CliError('give --volume NAME (a volume backup) or --sandbox NAME (a --rootfs backup)');
      const moat = await ctx.moat();
      if (opts.sandbox) {
        const s = await moat.backups.restoreSandbox(id, opts.sandbox);
        return void ctx.out(`sandbox ${s.metadata.name} restored from ${id}: starting (moat wait --for=condition=Ready sandbox/${s.metadata.name})\n`);
      }
      const v = await moat.backups.restore(id, opts.volume!);
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
