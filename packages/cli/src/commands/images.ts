import type { Command } from 'commander';
import type { Context } from '../context.js';
import { checkFormat, formatTable, humanAge, humanBytes, render, shortDigest } from '../output.js';

export function registerImages(program: Command, ctx: Context): void {
  const images = program.command('images').alias('image').description('images sandboxes can start from');
  images
    .command('list', { isDefault: true })
    .alias('ls')
    .description('list images')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).images.list();
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          ['NAME', 'DIGEST', 'SIZE', 'AGE'],
          items.map((i) => [i.name, shortDigest(i.digest), humanBytes(i.sizeBytes), humanAge(i.createdAt, now)]),
        ),
      );
    });

  images
    .command('build <name>')
    .description('build an image from the catalog into the local store (run on the server host, as root; `moat up` builds base itself)')
    .option('--data-dir <dir>', 'the server data dir whose image store to fill')
    .action(async (name: string, opts: { dataDir?: string }) => {
      const { buildImage } = await import('@moat/server');
      const image = await buildImage(name, { dataDir: opts.dataDir, log: (line) => ctx.err(`${line}\n`) });
      ctx.out(`${image.name} ${image.digest}\n`);
    });
}
