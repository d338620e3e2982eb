import type { Command } from 'commander';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, humanAge, render } from '../output.js';
import { readAll, readLine } from '../streams.js';

/** The value comes from stdin (all of it, one trailing newline dropped), so it never lands in shell history. */
async function valueFromStdin(ctx: Context): Promise<string> {
  if (ctx.io.stdin.isTTY) {
    ctx.err('value: ');
    return readLine(ctx.io.stdin);
  }
  return (await readAll(ctx.io.stdin)).toString('utf8').replace(/\r?\n$/, '');
}

export function registerSecrets(program: Command, ctx: Context): void {
  const secrets = program.command('secrets').alias('secret').description("the namespace's secrets: write-only; sandboxes use them through the gateway");
  secrets
    .command('list', { isDefault: true })
    .alias('ls')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).secrets.list();
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          ['NAME', 'UPDATED', 'AGE'],
          items.map((s) => [s.name, humanAge(s.updatedAt, now), humanAge(s.createdAt, now)]),
        ),
      );
    });
  for (const [verb, what] of [
    ['create', 'create a secret'],
    ['set', "replace a secret's value"],
  ] as const) {
    secrets
      .command(`${verb} <name>`)
      .description(`${what}; the value is read from stdin and never shown again`)
      .action(async (name: string) => {
        const value = await valueFromStdin(ctx);
        if (!value) throw new CliError('empty value: pipe the value on stdin, e.g. `moat secrets create github < token.txt`');
        const moat = await ctx.moat();
        await (verb === 'create' ? moat.secrets.create(name, value) : moat.secrets.replace(name, value));
        ctx.out(`secret ${name} ${verb === 'create' ? 'created' : 'updated'}\n`);
      });
  }
  secrets
    .command('delete <name>')
    .alias('rm')
    .action(async (name: string) => {
      await (await ctx.moat()).secrets.delete(name);
      ctx.out(`secret ${name} deleted\n`);
    });
  secrets
    .command('rotate-key')
    .description('make a new master key and re-encrypt every secret with it (admin)')
    .action(async () => {
      const { reencrypted } = await (await ctx.moat()).secrets.rotateKey();
      ctx.out(`master key rotated; ${reencrypted} secret(s) re-encrypted\n`);
    });
}
