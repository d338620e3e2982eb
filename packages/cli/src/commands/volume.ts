import type { Command } from 'commander';
import type { Context } from '../context.js';
import { checkFormat, formatTable, humanAge, render } from '../output.js';

/** `moat volume list|create|delete`: named volumes of the namespace (docs/lifecycle.md). */
export function registerVolume(program: Command, ctx: Context): void {
  const volume = program.command('volume').alias('volumes').description('named volumes: /data images that can outlive sandboxes');
  volume
    .command('list', { isDefault: true })
    .alias('ls')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).volumes.list();
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          ['NAME', 'SIZE', 'SANDBOX', 'RETAIN', 'AGE'],
          items.map((v) => [v.name, v.size, v.sandbox ?? '-', v.retain ? 'yes' : 'no', humanAge(v.createdAt, now)]),
        ),
      );
    });
  volume
    .command('create <name>')
    .description('create an empty volume; attach it with spec.podTemplate.spec.volumes[].persistentVolumeClaim.claimName')
    .requiredOption('--size <quantity>', 'ext4 size, e.g. 1Gi or 500Mi')
    .action(async (name: string, opts: { size: string }) => {
      const v = await (await ctx.moat()).volumes.create(name, opts.size);
      ctx.out(`volume ${v.name} created (${v.size})\n`);
    });
  volume
    .command('delete <name>')
    .alias('rm')
    .description('delete a volume and its data (not while a sandbox has it)')
    .action(async (name: string) => {
      await (await ctx.moat()).volumes.delete(name);
      ctx.out(`volume ${name} deleted\n`);
    });
}
