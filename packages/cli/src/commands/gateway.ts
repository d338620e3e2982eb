import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { GatewayConfig } from '@moat/sdk';
import YAML from 'yaml';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, render } from '../output.js';
import { readAll } from '../streams.js';

export function registerGateway(program: Command, ctx: Context): void {
  const gateway = program.command('gateway').description("the namespace's API gateway: LLM providers, models, budgets, credential rules (docs/gateway.md)");
  gateway
    .command('get')
    .option('-o, --output <format>', 'json or yaml', 'yaml')
    .action(async (opts: { output: string }) => {
      ctx.out(render(await (await ctx.moat()).gateway.get(), checkFormat(opts.output, ['json', 'yaml'] as const)!));
    });
  gateway
    .command('set')
    .description('replace the configuration with a YAML or JSON file')
    .requiredOption('-f, --filename <file>', 'the configuration (- for stdin)')
    .action(async (opts: { filename: string }) => {
      const text = opts.filename === '-' ? (await readAll(ctx.io.stdin)).toString('utf8') : await readFile(resolve(ctx.io.cwd, opts.filename), 'utf8');
      let config: unknown;
      try {
        config = YAML.parse(text);
      } catch (err) {
        throw new CliError(`${opts.filename}: ${(err as Error).message}`);
      }
      await (await ctx.moat()).gateway.set(config as GatewayConfig);
      ctx.out('gateway configuration set\n');
    });
  gateway
    .command('usage')
    .description('LLM requests and tokens of a day, per sandbox and model')
    .option('--day <yyyy-mm-dd>', 'UTC day (default today)')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { day?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).gateway.usage(opts.day ? { day: opts.day } : {});
      if (format) return void ctx.out(render({ items }, format));
      ctx.out(
        formatTable(
          ['SANDBOX', 'MODEL', 'USER', 'AGENT', 'REQUESTS', 'INPUT', 'OUTPUT'],
          items.map((u) => [u.sandbox, u.model, u.user, u.agent, String(u.requests), String(u.inputTokens), String(u.outputTokens)]),
        ),
      );
    });
}
