import type { Command } from 'commander';
import type { AuditFilter } from '@moat/sdk';
import { parseIntArg } from '../args.js';
import type { Context } from '../context.js';
import { checkFormat, formatTable, render } from '../output.js';

interface FilterOptions {
  sandbox?: string;
  namespace?: string;
  user?: string;
  agent?: string;
  action?: string;
  since?: string;
  until?: string;
}

const withFilters = (cmd: Command) =>
  cmd
    .option('--sandbox <name>', "events of one sandbox (in --namespace, default the CLI's namespace)")
    .option('--namespace <ns>', 'events in one namespace')
    .option('--user <name>', 'events by one user')
    .option('--agent <name>', 'events by one agent')
    .option('--action <action>', 'e.g. "POST sandboxes/{name}/exec" or egress')
    .option('--since <time>', 'ISO 8601 date-time')
    .option('--until <time>', 'ISO 8601 date-time');

async function filterFrom(ctx: Context, o: FilterOptions): Promise<AuditFilter> {
  const namespace = o.namespace ?? (o.sandbox ? (await ctx.connection()).namespace : undefined);
  return Object.fromEntries(Object.entries({ ...o, namespace }).filter(([, v]) => v !== undefined));
}

export function registerAudit(program: Command, ctx: Context): void {
  const audit = program.command('audit').description('the tamper-evident audit log');
  withFilters(audit.command('list', { isDefault: true }).alias('ls').description('audit events, oldest first'))
    .option('--limit <n>', 'at most N events (default 1000)')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: FilterOptions & { limit?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const { limit, output: _output, ...filters } = opts;
      const items = await (
        await ctx.moat()
      ).audit.list({ ...(await filterFrom(ctx, filters)), ...(limit ? { limit: parseIntArg(limit, '--limit', 1, 10000) } : {}) });
      if (format) return void ctx.out(render({ items }, format));
      const who = (a: (typeof items)[number]['actor']) => (a.user ? `${a.user}${a.agent ? `/${a.agent}` : ''}` : `(key ${a.keyId ?? 'none'})`);
      ctx.out(
        formatTable(
          ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'NAMESPACE', 'OBJECT', 'RESULT'],
          items.map((e) => [String(e.seq), e.time, who(e.actor), e.action, e.namespace || '-', e.object || '-', e.result]),
        ),
      );
    });
  withFilters(audit.command('export').description('matching events as JSON Lines on stdout')).action(async (opts: FilterOptions) => {
    ctx.out(await (await ctx.moat()).audit.export(await filterFrom(ctx, opts)));
  });
  audit
    .command('verify')
    .description('check the hash chain and signed checkpoints; exits 1 and names the first broken event if they do not hold')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const r = await (await ctx.moat()).audit.verify();
      if (format) ctx.out(render(r, format));
      else if (r.ok) ctx.out(`audit log intact: ${r.events} events, ${r.checkpoints} signed checkpoints\n`);
      else ctx.err(`audit log BROKEN at event ${r.brokenAt}: ${r.reason}\n`);
      if (!r.ok) ctx.exitCode = 1;
    });
}
