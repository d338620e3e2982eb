import { MoatError, type KubeObject } from '@moat/sdk';
import type { Context } from '../context.js';
import { tableRows, type ResourceKind } from '../kinds.js';
import { checkFormat, formatTable, render } from '../output.js';

export const GET_FORMATS = ['json', 'yaml', 'wide', 'name'] as const;
export type GetFormat = (typeof GET_FORMATS)[number];

async function client(ctx: Context, kind: ResourceKind, namespace?: string) {
  return (await ctx.moat()).resources(kind.apiVersion, kind.plural, { namespace });
}

export async function printList(ctx: Context, kind: ResourceKind, opts: { output?: string; selector?: string }): Promise<void> {
  const format = checkFormat(opts.output, GET_FORMATS);
  const c = await client(ctx, kind);
  const items = await c.list({ labelSelector: opts.selector });
  if (format === 'json' || format === 'yaml') {
    ctx.out(render({ apiVersion: kind.apiVersion, kind: `${kind.kind}List`, items }, format));
  } else if (format === 'name') {
    ctx.out(items.map((o) => `${kind.singular}/${o.metadata.name}\n`).join(''));
  } else if (items.length === 0) {
    ctx.err(`No resources found in ${c.namespace} namespace.\n`);
  } else {
    const { headers, rows } = tableRows(kind, items, format === 'wide');
    ctx.out(formatTable(headers, rows));
  }
}

export function printObjects(ctx: Context, kind: ResourceKind, objects: KubeObject[], format: GetFormat | undefined): void {
  if (format === 'json' || format === 'yaml') {
    for (const o of objects) ctx.out(render(o, format));
  } else if (format === 'name') {
    ctx.out(objects.map((o) => `${kind.singular}/${o.metadata.name}\n`).join(''));
  } else {
    const { headers, rows } = tableRows(kind, objects, format === 'wide');
    ctx.out(formatTable(headers, rows));
  }
}

export async function printOne(ctx: Context, kind: ResourceKind, name: string, output?: string): Promise<void> {
  const format = checkFormat(output, GET_FORMATS);
  printObjects(ctx, kind, [await (await client(ctx, kind)).get(name)], format);
}

/**
 * Deletes each name in turn, reporting failures as they happen and carrying
 * on with the rest: the exit code says whether all of them went.
 */
export async function deleteObjects(
  ctx: Context,
  targets: { kind: ResourceKind; name: string; namespace?: string }[],
  opts: { wait?: boolean; ignoreNotFound?: boolean },
  /** How to delete one; default: DELETE on the object itself. */
  remove?: (t: { kind: ResourceKind; name: string; namespace?: string }) => Promise<unknown>,
): Promise<void> {
  for (const t of targets) {
    try {
      await (remove ? remove(t) : (await client(ctx, t.kind, t.namespace)).delete(t.name, { wait: opts.wait }));
      ctx.out(`${t.kind.singular} "${t.name}" deleted\n`);
    } catch (err) {
      if (opts.ignoreNotFound && err instanceof MoatError && err.code === 404) continue;
      if (!(err instanceof MoatError)) throw err; // not the server saying no: a real problem, stop
      ctx.err(`error: ${err.message}\n`);
      ctx.exitCode = 1;
    }
  }
}
