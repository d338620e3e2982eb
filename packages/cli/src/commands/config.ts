import type { Command } from 'commander';
import { keyHint } from '../config.js';
import type { Context } from '../context.js';
import { checkFormat, render } from '../output.js';

export function registerConfig(program: Command, ctx: Context): void {
  const config = program.command('config').description('show how the CLI finds its server');
  config
    .command('view')
    .description('print the server and web portal URLs, key hint, config file and namespace in use')
    .option('-o, --output <format>', 'json or yaml', 'yaml')
    .action(async (opts: { output: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const)!;
      const conn = await ctx.connection();
      const view = {
        url: conn.url ?? null,
        // The web portal is served by the same server, at its root.
        portalUrl: conn.url ? `${conn.url.replace(/\/+$/, '')}/` : null,
        urlFrom: conn.urlFrom ?? null,
        apiKeySet: !!conn.apiKey,
        apiKeyHint: keyHint(conn.apiKey) ?? null,
        apiKeyFrom: conn.apiKeyFrom ?? null,
        configFile: conn.configFile,
        namespace: conn.namespace,
      };
      ctx.out(render(view, format));
    });
}
