import type { Command } from 'commander';
import type { Quota, Role } from '@moat/sdk';
import { parseDuration, parseIntArg } from '../args.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, humanAge, render } from '../output.js';

const ROLES = ['admin', 'member', 'viewer'];

interface QuotaOptions {
  sandboxes?: string;
  cpu?: string;
  memory?: string;
  storage?: string;
}

const withQuotaOptions = (cmd: Command) =>
  cmd
    .option('--sandboxes <n>', 'at most N sandboxes at once')
    .option('--cpu <cores>', 'total CPU of those sandboxes (e.g. 4 or 500m)')
    .option('--memory <bytes>', 'total memory (e.g. 8Gi)')
    .option('--storage <bytes>', 'total disk: writable layers and volumes (e.g. 50Gi)');

/** Undefined when no quota option was given, so "no change" differs from "no limits". */
function quotaFrom(o: QuotaOptions): Quota | undefined {
  const q: Quota = {
    ...(o.sandboxes !== undefined ? { sandboxes: parseIntArg(o.sandboxes, '--sandboxes') } : {}),
    ...(o.cpu !== undefined ? { cpu: o.cpu } : {}),
    ...(o.memory !== undefined ? { memory: o.memory } : {}),
    ...(o.storage !== undefined ? { storage: o.storage } : {}),
  };
  return Object.keys(q).length ? q : undefined;
}

function role(r: string | undefined): Role | undefined {
  if (r !== undefined && !ROLES.includes(r)) throw new CliError(`unknown role "${r}": use one of ${ROLES.join(', ')}`);
  return r as Role | undefined;
}

const showQuota = (q: Quota) =>
  Object.entries(q)
    .map(([k, v]) => `${k}=${v}`)
    .join(',') || '-';

export function registerIdentity(program: Command, ctx: Context): void {
  const users = program.command('users').alias('user').description('users and their roles and quotas (admin)');
  users
    .command('list', { isDefault: true })
    .alias('ls')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).users.list();
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          ['NAME', 'ROLE', 'QUOTA', 'AGE'],
          items.map((u) => [u.name, u.role, showQuota(u.quota), humanAge(u.createdAt, now)]),
        ),
      );
    });
  withQuotaOptions(
    users
      .command('create <name>')
      .description("create a user; prints the user's API key, shown only this once")
      .requiredOption('--role <role>', 'admin, member or viewer')
      .option('-o, --output <format>', 'key (the key alone), json or yaml'),
  ).action(async (name: string, opts: QuotaOptions & { role: string; output?: string }) => {
    const format = checkFormat(opts.output, ['key', 'json', 'yaml'] as const);
    const quota = quotaFrom(opts);
    const user = await (await ctx.moat()).users.create({ name, role: role(opts.role)!, ...(quota ? { quota } : {}) });
    if (format === 'key') return void ctx.out(`${user.key.key}\n`);
    if (format) return void ctx.out(render(user, format));
    ctx.out(`user ${user.name} (${user.role}) created; namespace ${user.name}\nAPI key (shown only this once): ${user.key.key}\n`);
  });
  users
    .command('get <name>')
    .option('-o, --output <format>', 'json or yaml', 'yaml')
    .action(async (name: string, opts: { output: string }) => {
      ctx.out(render(await (await ctx.moat()).users.get(name), checkFormat(opts.output, ['json', 'yaml'] as const)!));
    });
  withQuotaOptions(
    users
      .command('set <name>')
      .description("change a user's role or quota (the quota given replaces the old one)")
      .option('--role <role>', 'admin, member or viewer'),
  ).action(async (name: string, opts: QuotaOptions & { role?: string }) => {
    const quota = quotaFrom(opts);
    const r = role(opts.role);
    if (!quota && !r) throw new CliError('nothing to change: give --role or a quota option');
    const u = await (await ctx.moat()).users.update(name, { ...(r ? { role: r } : {}), ...(quota ? { quota } : {}) });
    ctx.out(`user ${u.name}: role ${u.role}, quota ${showQuota(u.quota)}\n`);
  });
  users
    .command('delete <name>')
    .alias('rm')
    .description('delete a user who owns nothing any more; their keys stop working')
    .action(async (name: string) => {
      await (await ctx.moat()).users.delete(name);
      ctx.out(`user ${name} deleted\n`);
    });

  const agents = program.command('agents').alias('agent').description("a user's agents: each owns one namespace");
  const userOption = (cmd: Command) => cmd.option('--user <name>', "whose (default: the key's own user)");
  userOption(agents.command('list', { isDefault: true }).alias('ls').option('-o, --output <format>', 'json or yaml')).action(
    async (opts: { user?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).agents.list(opts);
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          ['NAME', 'USER', 'NAMESPACE', 'QUOTA', 'AGE'],
          items.map((a) => [a.name, a.user, a.namespace, showQuota(a.quota), humanAge(a.createdAt, now)]),
        ),
      );
    },
  );
  userOption(agents.command('create <name>').description('create an agent; prints its namespace')).action(async (name: string, opts: { user?: string }) => {
    ctx.out(`${(await (await ctx.moat()).agents.create(name, opts)).namespace}\n`);
  });
  userOption(withQuotaOptions(agents.command('quota <name>').description("set an agent's quota (admin)"))).action(
    async (name: string, opts: QuotaOptions & { user?: string }) => {
      const a = await (await ctx.moat()).agents.setQuota(name, quotaFrom(opts) ?? {}, opts);
      ctx.out(`agent ${a.name} of ${a.user}: quota ${showQuota(a.quota)}\n`);
    },
  );
  userOption(agents.command('delete <name>').alias('rm').description('delete an agent whose namespace is empty, with its keys')).action(
    async (name: string, opts: { user?: string }) => {
      await (await ctx.moat()).agents.delete(name, opts);
      ctx.out(`agent ${name} deleted\n`);
    },
  );

  const keys = program.command('keys').alias('key').description('API keys: for a user, or for one of its agents');
  userOption(keys.command('list', { isDefault: true }).alias('ls').option('-o, --output <format>', 'json or yaml')).action(
    async (opts: { user?: string; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).keys.list(opts);
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      const state = (k: (typeof items)[number]) => (k.revokedAt ? 'revoked' : k.expiresAt && Date.parse(k.expiresAt) < now ? 'expired' : 'active');
      ctx.out(
        formatTable(
          ['ID', 'NAME', 'AGENT', 'STATE', 'EXPIRES', 'AGE'],
          items.map((k) => [k.id, k.name, k.agent ?? '-', state(k), k.expiresAt ?? 'never', humanAge(k.createdAt, now)]),
        ),
      );
    },
  );
  userOption(
    keys
      .command('create <name>')
      .description('create a key; prints it, shown only this once')
      .option('--agent <name>', "scope the key to this agent's namespace")
      .option('--expires-in <duration>', 'e.g. 12h or 30d (default: never)')
      .option('-o, --output <format>', 'key (the key alone), json or yaml'),
  ).action(async (name: string, opts: { user?: string; agent?: string; expiresIn?: string; output?: string }) => {
    const format = checkFormat(opts.output, ['key', 'json', 'yaml'] as const);
    const expiresAt = opts.expiresIn === undefined ? undefined : new Date(Date.now() + parseDuration(opts.expiresIn, '--expires-in') * 1000);
    const k = await (
      await ctx.moat()
    ).keys.create({ name, ...(opts.user ? { user: opts.user } : {}), ...(opts.agent ? { agent: opts.agent } : {}), ...(expiresAt ? { expiresAt } : {}) });
    if (format === 'key') return void ctx.out(`${k.key}\n`);
    if (format) return void ctx.out(render(k, format));
    ctx.out(`key ${k.id} created${k.expiresAt ? `, expires ${k.expiresAt}` : ''} (shown only this once):\n${k.key}\n`);
  });
  userOption(keys.command('revoke <id>').description('revoke a key; it stops working at once')).action(async (id: string, opts: { user?: string }) => {
    await (await ctx.moat()).keys.revoke(id, opts);
    ctx.out(`key ${id} revoked\n`);
  });
}
