import { MoatError } from '@moat/sdk';
import type { Command } from 'commander';
import { parseDuration, parseResourceRef } from '../args.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { kindByName } from '../kinds.js';

export function registerWait(program: Command, ctx: Context): void {
  program
    .command('wait')
    .description('wait for a condition, e.g. `moat wait --for=condition=Ready sandbox/NAME --timeout=60s`')
    .argument('<resource...>', 'TYPE/NAME (or TYPE NAME)')
    .requiredOption('--for <condition>', 'condition=NAME, e.g. condition=Ready')
    .option('--timeout <duration>', 'give up after this long (exit 1)', '60s')
    .action(async (ref: string[], opts: { for: string; timeout: string }) => {
      const condition = parseFor(opts.for);
      const timeoutSeconds = parseDuration(opts.timeout, '--timeout');
      const [type, name] = parseResourceRef(ref);
      const kind = kindByName(type);
      if (!kind.waitable) throw new CliError(`${kind.plural} have no conditions to wait for`);
      const client = (await ctx.moat()).resources(kind.apiVersion, kind.plural);
      try {
        await client.wait(name, { condition, timeoutSeconds });
      } catch (err) {
        if (err instanceof MoatError && (err.code === 408 || err.reason === 'Timeout')) {
          throw new CliError(`timed out after ${opts.timeout} waiting for condition ${condition} on ${kind.singular}/${name}`);
        }
        throw err;
      }
      ctx.out(`${kind.singular}/${name} condition met\n`);
    });
}

/** "condition=Ready" (or kubectl's "condition=Ready=True") → "Ready". */
export function parseFor(value: string): string {
  const m = /^condition=([^=]+)(=True)?$/i.exec(value.trim());
  if (!m) throw new CliError(`unsupported --for "${value}": use --for=condition=NAME, e.g. --for=condition=Ready`);
  return m[1];
}
