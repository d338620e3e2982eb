import type { Command } from 'commander';
import { Moat } from '@moat/sdk';
import { configPath, readConfig, writeConfig } from '../config.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { readLine } from '../streams.js';

export function registerLogin(program: Command, ctx: Context): void {
  program
    .command('login')
    .description('check an API key against a server and save both for later commands (the key is read from stdin unless given)')
    .option('--url <url>', 'server URL (default: $MOAT_URL or the saved one)')
    .option('--api-key <key>', 'the key (prefer stdin: a key on the command line lands in shell history)')
    .option('--namespace <ns>', "where commands act (default: the key's own namespace)")
    .action(async (opts: { url?: string; apiKey?: string; namespace?: string }) => {
      const file = configPath(ctx.io.env);
      const saved = await readConfig(file);
      const url = opts.url ?? ctx.io.env.MOAT_URL ?? saved.url;
      if (!url) throw new CliError('no server: give --url (e.g. http://127.0.0.1:6628)');
      if (opts.apiKey === undefined && ctx.io.stdin.isTTY) ctx.err('API key: ');
      const apiKey = (opts.apiKey ?? (await readLine(ctx.io.stdin))).trim();
      if (!apiKey) throw new CliError('no API key: pipe it on stdin or give --api-key');
      const me = await new Moat({ url, apiKey }).whoami();
      const namespace = opts.namespace ?? me.namespace;
      if (!me.namespaces.includes(namespace) && me.role !== 'admin')
        throw new CliError(`namespace "${namespace}" is not one of this key's: ${me.namespaces.join(', ')}`);
      await writeConfig(file, { ...saved, url, apiKey, namespace });
      ctx.out(`logged in to ${url} as ${me.user}${me.agent ? ` (agent ${me.agent})` : ''}, role ${me.role}, namespace ${namespace}; saved to ${file}\n`);
    });
}
