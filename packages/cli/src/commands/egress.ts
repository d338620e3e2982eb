import type { Command } from 'commander';
import { parseIntArg } from '../args.js';
import type { Context } from '../context.js';
import { checkFormat, formatTable, render } from '../output.js';

export function registerEgress(program: Command, ctx: Context): void {
  const egress = program.command('egress').description("what sandboxes' code tried to reach through the egress proxy");
  egress
    .command('log')
    .description("a sandbox's egress decisions, oldest first")
    .argument('<sandbox>', 'sandbox name')
    .option('--limit <n>', 'the most recent N (default 500)')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (name: string, opts: { limit?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const sbx = await (await ctx.moat()).sandboxes.get(name);
      const items = await sbx.egressLog({ limit: opts.limit === undefined ? undefined : parseIntArg(opts.limit, '--limit', 1, 10000) });
      if (format) return ctx.out(render({ items }, format));
      if (items.length === 0) return ctx.err(`No egress from sandbox ${name} yet.\n`);
      const rows = items.map((r) => [
        r.time.slice(11, 19),
        r.allowed ? 'allowed' : 'DENIED',
        r.method,
        `${r.host}:${r.port}${r.path ?? ''}`,
        String(r.status ?? ''),
        String(r.bytesUp),
        String(r.bytesDown),
        String(Math.round(r.durationMs)),
        r.allowed ? (r.rule ?? '') : (r.rule ?? r.reason),
      ]);
      ctx.out(formatTable(['TIME', 'DECISION', 'METHOD', 'TARGET', 'STATUS', 'UP', 'DOWN', 'MS', 'RULE'], rows));
    });
}
