import { MoatError, type Sandbox } from '@moat/sdk';
import { Command, Option } from 'commander';
import { collect, parseDuration, parseIntArg, parseKeyValues } from '../args.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { SANDBOX_KIND } from '../kinds.js';
import { checkFormat, formatTable, humanAge, render } from '../output.js';
import { deleteObjects, printList, printOne } from './resources.js';

interface CreateOptions {
  image?: string;
  template?: string;
  name?: string;
  runtime?: string;
  env: string[];
  label: string[];
  cpu?: string;
  memory?: string;
  disk?: string;
  pids?: string;
  wait: boolean;
  timeout?: string;
  output: string;
}

export function registerSandbox(program: Command, ctx: Context): void {
  const sandbox = program.command('sandbox').alias('sandboxes').alias('sbx').description('create, list, inspect and delete sandboxes');

  sandbox
    .command('create')
    .description('create a sandbox and wait until it is Ready; prints its name')
    .addOption(new Option('--image <image>', 'Moat image (default base)').conflicts('template'))
    .option('--template <template>', 'SandboxTemplate to start from')
    .option('--name <name>', 'sandbox name (default: generated, sbx-xxxxx)')
    .option('--runtime <runtime>', 'runc (default), gvisor or microvm')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('-l, --label <KEY=VALUE>', 'label (repeatable)', collect, [])
    .option('--cpu <cpu>', 'CPU limit: cores or millicores (1, 0.5, 500m)')
    .option('--memory <memory>', 'memory limit (512Mi, 2Gi)')
    .option('--disk <size>', 'writable layer size (2Gi)')
    .option('--pids <n>', 'process limit')
    .option('--no-wait', 'return as soon as the sandbox is accepted')
    .option('--timeout <seconds>', 'how long to wait for Ready (default 60s)')
    .option('-o, --output <format>', 'name, json or yaml', 'name')
    .argument('[command...]', 'main process (after --); default: none, the sandbox idles for exec')
    .action(async (command: string[], opts: CreateOptions) => {
      const format = checkFormat(opts.output, ['name', 'json', 'yaml'] as const)!;
      const timeoutSeconds = opts.timeout === undefined ? undefined : parseDuration(opts.timeout, '--timeout');
      const moat = await ctx.moat();
      const sbx = await moat.sandboxes.create({
        image: opts.image ?? (opts.template ? undefined : 'base'),
        template: opts.template,
        name: opts.name,
        runtime: opts.runtime,
        env: parseKeyValues(opts.env, '--env'),
        labels: parseKeyValues(opts.label, '--label'),
        resources: { cpu: opts.cpu, memory: opts.memory, disk: opts.disk, pids: opts.pids === undefined ? undefined : parseIntArg(opts.pids, '--pids', 1) },
        command: command.length ? command : undefined,
        wait: false,
      });
      if (opts.wait) await waitReady(sbx, timeoutSeconds);
      ctx.out(format === 'name' ? `${sbx.name}\n` : render(sbx.resource, format));
    });

  sandbox
    .command('list')
    .alias('ls')
    .description('list sandboxes')
    .option('-o, --output <format>', 'json, yaml, wide or name')
    .option('-l, --selector <selector>', 'label selector, e.g. team=a,env=dev')
    .action((opts: { output?: string; selector?: string }) => printList(ctx, SANDBOX_KIND, opts));

  sandbox
    .command('get')
    .description('show one sandbox')
    .argument('<name>')
    .option('-o, --output <format>', 'json, yaml, wide or name')
    .action((name: string, opts: { output?: string }) => printOne(ctx, SANDBOX_KIND, name, opts.output));

  sandbox
    .command('delete')
    .alias('rm')
    .description('delete sandboxes (waits until they are gone); a claimed sandbox goes with its claim')
    .argument('<names...>')
    .option('--no-wait', 'return without waiting for the sandboxes to be gone')
    .option('--ignore-not-found', 'treat "not found" as success')
    .action(async (names: string[], opts: { wait: boolean; ignoreNotFound?: boolean }) => {
      const moat = await ctx.moat();
      await deleteObjects(
        ctx,
        names.map((name) => ({ kind: SANDBOX_KIND, name })),
        opts,
        (t) => moat.sandboxes.delete(t.name, { wait: opts.wait }),
      );
    });

  for (const [action, description] of [
    ['pause', 'freeze every process of sandboxes (memory stays allocated; exec and file calls resume them)'],
    ['resume', 'thaw paused sandboxes'],
    ['hibernate', 'save the processes and memory of sandboxes to disk and free their memory (exec, file calls and port connections wake them)'],
    ['wake', 'restore hibernated sandboxes with their processes and memory'],
  ] as const) {
    sandbox
      .command(action)
      .description(description)
      .argument('<names...>')
      .action(async (names: string[]) => {
        const moat = await ctx.moat();
        for (const name of names) {
          const sbx = await (await moat.sandboxes.get(name))[action]();
          ctx.out(`sandbox/${sbx.name} ${sbx.resource.status?.phase ?? ''}\n`);
        }
      });
  }

  sandbox
    .command('extend')
    .description('set when a sandbox shuts down, counted from now (a claimed sandbox: its claim)')
    .argument('<name>')
    .requiredOption('--ttl <duration>', 'time left from now: 90s, 30m, 2h, 7d')
    .action(async (name: string, opts: { ttl: string }) => {
      const ttlSeconds = parseDuration(opts.ttl, '--ttl');
      if (ttlSeconds < 1) throw new CliError('--ttl must be at least 1s');
      const moat = await ctx.moat();
      const sbx = await (await moat.sandboxes.get(name)).extend({ ttlSeconds });
      ctx.out(`sandbox/${sbx.name} shuts down at ${sbx.resource.spec.shutdownTime ?? '?'}\n`);
    });

  sandbox
    .command('events')
    .description('what happened to a sandbox, oldest first')
    .argument('<name>')
    .option('-o, --output <format>', 'json or yaml (default: a table)')
    .action(async (name: string, opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const moat = await ctx.moat();
      const events = await (await moat.sandboxes.get(name)).events();
      if (format) return ctx.out(render({ items: events }, format));
      ctx.out(
        formatTable(
          ['AGE', 'TYPE', 'REASON', 'MESSAGE'],
          events.map((e) => [humanAge(e.time), e.type, e.reason, e.message]),
        ),
      );
    });

  sandbox
    .command('logs')
    .description('output of the sandbox main command (and of its init)')
    .argument('<name>')
    .option('--tail <lines>', 'only the last N lines')
    .action(async (name: string, opts: { tail?: string }) => {
      const moat = await ctx.moat();
      const text = await (await moat.sandboxes.get(name)).logs({ tailLines: opts.tail === undefined ? undefined : parseIntArg(opts.tail, '--tail') });
      ctx.out(text);
    });
}

/** A sandbox that never gets Ready still exists: name it, or the user cannot clean it up. */
async function waitReady(sbx: Sandbox, timeoutSeconds: number | undefined): Promise<void> {
  try {
    await sbx.waitReady({ timeoutSeconds });
  } catch (err) {
    if (!(err instanceof MoatError)) throw err;
    throw new CliError(
      `sandbox "${sbx.name}" was created but is not Ready: ${err.message} (see \`moat sandbox logs ${sbx.name}\`, remove it with \`moat sandbox delete ${sbx.name}\`)`,
    );
  }
}
