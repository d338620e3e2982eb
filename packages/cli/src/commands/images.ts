import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Command } from 'commander';
import type { ImageProgress } from '@moat/sdk';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { checkFormat, formatTable, humanAge, humanBytes, render, shortDigest } from '../output.js';
import { readAll } from '../streams.js';
import { packDirectory } from '../tar.js';

export function registerImages(program: Command, ctx: Context): void {
  const images = program.command('images').alias('image').description('images sandboxes start from: pull, import, build, list, inspect, delete');
  images
    .command('list', { isDefault: true })
    .alias('ls')
    .description('list the images you can use (yours, the catalog, and published ones)')
    .option('-A, --all-namespaces', 'in every namespace you can see')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { allNamespaces?: boolean; output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const moat = await ctx.moat();
      const items = opts.allNamespaces ? await moat.images.list() : await moat.images.listNamespace();
      if (format) return void ctx.out(render({ items }, format));
      const now = Date.now();
      ctx.out(
        formatTable(
          [...(opts.allNamespaces ? ['NAMESPACE'] : []), 'NAME', 'DIGEST', 'SOURCE', 'SIZE', 'AGE'],
          items.map((i) => [
            ...(opts.allNamespaces ? [i.namespace || '(catalog)'] : []),
            `${i.name}${i.public && i.namespace ? ' (public)' : ''}`,
            shortDigest(i.digest),
            i.source,
            humanBytes(i.sizeBytes),
            humanAge(i.createdAt, now),
          ]),
        ),
      );
    });

  images
    .command('inspect <name>')
    .description("an image's digest, layers and config (ENTRYPOINT, CMD, ENV, WORKDIR, USER, ports)")
    .option('-o, --output <format>', 'json (default) or yaml')
    .action(async (name: string, opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const) ?? 'json';
      ctx.out(render(await (await ctx.moat()).images.get(name), format));
    });

  images
    .command('pull <reference>')
    .description('pull an image from a registry (registry/repo:tag or registry/repo@sha256:...)')
    .option('-q, --quiet', 'print only the digest')
    .action(async (reference: string, opts: { quiet?: boolean }) => {
      const image = await (await ctx.moat()).images.pull(reference, { onProgress: opts.quiet ? undefined : progressPrinter(ctx) });
      ctx.out(opts.quiet ? `${image.digest}\n` : `${image.name} ${image.digest}\n`);
    });

  images
    .command('import <file>')
    .description('import a `docker save` or OCI-layout archive (a tar; - reads stdin)')
    .option('-t, --tag <name>', 'the name for a one-image archive (default: its own tag)')
    .action(async (file: string, opts: { tag?: string }) => {
      const body = file === '-' ? Readable.toWeb(ctx.io.stdin as unknown as Readable) : await fileBody(file);
      const items = await (
        await ctx.moat()
      ).images.importArchive(body as ReadableStream<Uint8Array>, { ...(opts.tag ? { tag: opts.tag } : {}), onProgress: progressPrinter(ctx) });
      for (const i of items) ctx.out(`${i.name} ${i.digest}\n`);
    });

  images
    .command('build <dir>')
    .description('build an image from a Dockerfile on the server (the directory is sent as the build context)')
    .requiredOption('-t, --tag <name>', 'the name of the image')
    .option('-f, --file <dockerfile>', 'the Dockerfile, relative to the directory (default Dockerfile)')
    .option('--target <stage>', 'build up to this stage')
    .option('--build-arg <KEY=VALUE>', 'a build argument (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('-q, --quiet', 'print only the digest')
    .action(async (dir: string, opts: { tag: string; file?: string; target?: string; buildArg: string[]; quiet?: boolean }) => {
      if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new CliError(`${dir} is not a directory`);
      const buildArgs: Record<string, string> = {};
      for (const kv of opts.buildArg) {
        const i = kv.indexOf('=');
        if (i < 1) throw new CliError(`--build-arg ${kv}: expected KEY=VALUE`);
        buildArgs[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const context = await packDirectory(dir, (m) => ctx.err(`warning: ${m}\n`));
      const image = await (
        await ctx.moat()
      ).images.build(context, {
        tag: opts.tag,
        ...(opts.file ? { dockerfile: opts.file } : {}),
        ...(opts.target ? { target: opts.target } : {}),
        buildArgs,
        onProgress: opts.quiet ? undefined : progressPrinter(ctx),
      });
      ctx.out(opts.quiet ? `${image.digest}\n` : `${image.name} ${image.digest}\n`);
    });

  images
    .command('delete <name...>')
    .alias('rm')
    .description('delete image names (refused while a sandbox, template or backup uses one)')
    .action(async (names: string[]) => {
      const moat = await ctx.moat();
      for (const n of names) {
        await moat.images.delete(n);
        ctx.out(`image ${n} deleted\n`);
      }
    });

  images
    .command('publish <name>')
    .description('admins: make an image visible to every namespace')
    .option('--private', 'make it visible to its namespace only again')
    .action(async (name: string, opts: { private?: boolean }) => {
      const i = await (await ctx.moat()).images.publish(name, !opts.private);
      ctx.out(`image ${i.name} is ${i.public ? 'public' : 'private'}\n`);
    });

  images
    .command('prepare <name>')
    .description('build a catalog image (base, code-interpreter) into the local store (on the server host, as root; `moat up` builds base itself)')
    .option('--data-dir <dir>', 'the server data dir whose image store to fill')
    .action(async (name: string, opts: { dataDir?: string }) => {
      const { prepareCatalogImage } = await import('@moat/server');
      const image = await prepareCatalogImage(name, { dataDir: opts.dataDir, log: (line) => ctx.err(`${line}\n`) });
      ctx.out(`${image.name} ${image.digest}\n`);
    });

  const registry = program.command('registry').description("the namespace's registry logins (kept as secrets; never inside a sandbox)");
  registry
    .command('login [registry]')
    .description('log in to a registry (checked against it), or import a docker config.json with --config')
    .option('-u, --username <user>')
    .option('-p, --password <password>', 'prefer --password-stdin: a password here lands in shell history')
    .option('--password-stdin', 'read the password from stdin')
    .option('--config <file>', 'import the logins of a docker config.json (e.g. ~/.docker/config.json)')
    .action(async (host: string | undefined, opts: { username?: string; password?: string; passwordStdin?: boolean; config?: string }) => {
      const moat = await ctx.moat();
      if (opts.config) {
        for (const l of await moat.images.loginDockerConfig(await readFile(opts.config, 'utf8'))) ctx.out(`logged in to ${l.registry} as ${l.username}\n`);
        return;
      }
      if (!host) throw new CliError('give the registry (host[:port]), or --config FILE');
      if (!opts.username) throw new CliError('give --username');
      const password = opts.passwordStdin ? (await readAll(ctx.io.stdin)).toString('utf8').replace(/\r?\n$/, '') : opts.password;
      if (!password) throw new CliError('give the password with --password-stdin (or --password)');
      const l = await moat.images.login(host, opts.username, password);
      ctx.out(`logged in to ${l.registry} as ${l.username}\n`);
    });
  registry
    .command('list', { isDefault: true })
    .alias('ls')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (opts: { output?: string }) => {
      const format = checkFormat(opts.output, ['json', 'yaml'] as const);
      const items = await (await ctx.moat()).images.registries();
      if (format) return void ctx.out(render({ items }, format));
      ctx.out(
        formatTable(
          ['REGISTRY', 'USERNAME'],
          items.map((l) => [l.registry, l.username]),
        ),
      );
    });
  registry.command('logout <registry>').action(async (host: string) => {
    await (await ctx.moat()).images.logout(host);
    ctx.out(`logged out of ${host}\n`);
  });
}

async function fileBody(file: string): Promise<ReadableStream<Uint8Array>> {
  if (!(await stat(file).catch(() => undefined))?.isFile()) throw new CliError(`${file} is not a file`);
  return Readable.toWeb(createReadStream(file)) as ReadableStream<Uint8Array>;
}

/** Progress on stderr, as docker prints it: one line per layer state and per build step, the build's log as it comes. */
function progressPrinter(ctx: Context): (p: ImageProgress) => void {
  const shown = new Map<string, number>();
  return (p) => {
    switch (p.type) {
      case 'resolved':
        return ctx.err(`${p.digest}: ${p.layers} layers, ${humanBytes(p.bytes)}\n`);
      case 'layer': {
        const id = p.digest.slice(7, 19);
        if (p.status !== 'downloading') return ctx.err(`${id}: ${p.status === 'exists' ? 'already exists' : 'pull complete'}\n`);
        // A line per quarter of the layer, not per chunk.
        const quarter = p.total ? Math.floor((4 * (p.current ?? 0)) / p.total) : 0;
        if (shown.get(id) === quarter) return;
        shown.set(id, quarter);
        return ctx.err(`${id}: downloading ${humanBytes(p.current ?? 0)}/${humanBytes(p.total ?? 0)}\n`);
      }
      case 'log': // the builder's own log has its STEP lines
        return ctx.err(`${p.line}\n`);
      case 'step':
      case 'stored':
        return;
    }
  };
}
