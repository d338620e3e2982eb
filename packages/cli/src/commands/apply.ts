import { MoatError } from '@moat/sdk';
import type { Command } from 'commander';
import { collect } from '../args.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { kindByName, kindOfManifest } from '../kinds.js';
import { readManifestFile, specMatches, type Manifest } from '../manifests.js';
import { deleteObjects } from './resources.js';

export function registerApply(program: Command, ctx: Context): void {
  program
    .command('apply')
    .description('create the resources in a YAML file (multi-document; `-f -` reads stdin)')
    .requiredOption('-f, --filename <file>', 'YAML file, or - for stdin', collect, [])
    .action(async (opts: { filename: string[] }) => {
      const manifests = await readAll(ctx, opts.filename);
      for (const m of manifests) {
        try {
          ctx.out(`${await applyOne(ctx, m)}\n`);
        } catch (err) {
          if (!(err instanceof MoatError || err instanceof CliError)) throw err;
          ctx.err(`error: ${err.message}\n`);
          ctx.exitCode = 1;
        }
      }
    });

  program
    .command('delete')
    .description('delete resources named in a file (-f) or on the command line (TYPE NAME...)')
    .argument('[type]', 'resource type, e.g. sandbox')
    .argument('[names...]', 'names to delete')
    .option('-f, --filename <file>', 'YAML file, or - for stdin', collect, [])
    .option('--no-wait', 'return without waiting for the resources to be gone')
    .option('--ignore-not-found', 'treat "not found" as success')
    .action(async (type: string | undefined, names: string[], opts: { filename: string[]; wait: boolean; ignoreNotFound?: boolean }) => {
      const targets = [];
      if (opts.filename.length) {
        if (type) throw new CliError('give either -f FILE or TYPE NAME..., not both');
        for (const m of await readAll(ctx, opts.filename)) {
          const kind = kindOfManifest(m.object, m.where);
          if (!m.object.metadata.name) throw new CliError(`${m.where}: metadata.name is required to delete`);
          targets.push({ kind, name: m.object.metadata.name, namespace: m.object.metadata.namespace });
        }
      } else {
        if (!type || names.length === 0) throw new CliError('nothing to delete: give -f FILE or TYPE NAME...');
        const kind = kindByName(type);
        targets.push(...names.map((name) => ({ kind, name })));
      }
      await deleteObjects(ctx, targets, opts);
    });
}

async function readAll(ctx: Context, files: string[]): Promise<Manifest[]> {
  const all: Manifest[] = [];
  for (const f of files) all.push(...(await readManifestFile(ctx.io, f)));
  return all;
}

/** Returns the line to print: `KIND/NAME created`, `configured` or `unchanged`. */
async function applyOne(ctx: Context, m: Manifest): Promise<string> {
  const kind = kindOfManifest(m.object, m.where);
  const client = (await ctx.moat()).resources(kind.apiVersion, kind.plural, { namespace: m.object.metadata.namespace });
  const name = m.object.metadata.name;
  if (name) {
    let live;
    try {
      live = await client.get(name);
    } catch (err) {
      if (!(err instanceof MoatError && err.code === 404)) throw err;
    }
    if (live) {
      if (kind.immutableSpec) {
        if (specMatches(m.object.spec, live.spec)) return `${kind.singular}/${name} unchanged`;
        throw new CliError(
          `${kind.singular}/${name}: the spec of an existing ${kind.singular} cannot be changed; delete it and apply again (moat delete ${kind.singular} ${name})`,
        );
      }
      const labelsSame = specMatches(m.object.metadata.labels ?? {}, live.metadata.labels ?? {});
      if (specMatches(m.object.spec, live.spec) && labelsSame) return `${kind.singular}/${name} unchanged`;
      await client.replace(name, { ...m.object, apiVersion: kind.apiVersion, kind: kind.kind });
      return `${kind.singular}/${name} configured`;
    }
  }
  const created = await client.create({ ...m.object, apiVersion: kind.apiVersion, kind: kind.kind });
  return `${kind.singular}/${created.metadata.name} created`;
}
