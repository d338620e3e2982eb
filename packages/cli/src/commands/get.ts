import type { Command } from 'commander';
import type { Context } from '../context.js';
import { kindByName } from '../kinds.js';
import { printList, printOne } from './resources.js';

export function registerGet(program: Command, ctx: Context): void {
  program
    .command('get')
    .description('list resources of a type, or show one (e.g. `moat get sandboxes`)')
    .argument('<type>', 'sandboxes, sandboxtemplates, sandboxclaims or sandboxwarmpools (or a singular or alias: sbx, template, claim, pool)')
    .argument('[name]', 'show only this one')
    .option('-o, --output <format>', 'json, yaml, wide or name')
    .option('-l, --selector <selector>', 'label selector, e.g. team=a,env=dev')
    .action(async (type: string, name: string | undefined, opts: { output?: string; selector?: string }) => {
      const kind = kindByName(type);
      if (name) await printOne(ctx, kind, name, opts.output);
      else await printList(ctx, kind, opts);
    });
}
