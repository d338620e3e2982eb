// The import graph keeps its shape (docs/architecture.md): packages depend in one direction, and no circle of
// imports exists between files or between the server's folders. Type-only imports count: a circle of types is
// still two modules that cannot be understood, or changed, one without the other.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Which workspace packages each package may import. The SDK depends only on the wire format. */
const ALLOWED: Record<string, string[]> = {
  core: [],
  runtime: ['core'],
  gateway: ['core'],
  server: ['core', 'runtime', 'gateway'],
  sdk: [],
  cli: ['sdk', 'server'],
  portal: ['sdk'],
};

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return f === 'node_modules' || f === 'dist' ? [] : sources(p);
    return /\.tsx?$/.test(f) && !f.endsWith('.d.ts') ? [p] : [];
  });
}

/** Every module a file imports or re-exports, by specifier. */
function specifiers(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const found = [
    ...text.matchAll(/^\s*(?:import|export)\b[^'";]*?\bfrom\s*['"]([^'"]+)['"]/gms),
    ...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
    ...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
  ];
  return found.map((m) => m[1]!);
}

/** A relative specifier as the file it names (`./x.js` is `./x.ts` in the sources). */
function resolveLocal(from: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = resolve(dirname(from), spec).replace(/\.js$/, '');
  for (const candidate of [`${base}.ts`, `${base}.tsx`, join(base, 'index.ts')]) {
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {}
  }
  return undefined;
}

/** The circles of a directed graph, one per strongly connected component of more than one node (Tarjan). */
function circles(graph: Map<string, Set<string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || graph.get(v)?.has(v)) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

const packages = readdirSync(join(ROOT, 'packages')).filter((p) => statSync(join(ROOT, 'packages', p, 'src'), { throwIfNoEntry: false })?.isDirectory());
// The TypeScript packages (packages/agent's src is C).
const files = new Map(packages.map((p) => [p, sources(join(ROOT, 'packages', p, 'src'))] as const).filter(([, list]) => list.length > 0));
const rel = (f: string) => relative(ROOT, f);

test('every package imports only the packages below it', () => {
  const wrong: string[] = [];
  for (const [pkg, list] of files) {
    assert.ok(pkg in ALLOWED, `package ${pkg} is not in this test's dependency table: add it, with what it may import`);
    for (const f of list) {
      for (const spec of specifiers(f)) {
        const m = /^@moat\/([a-z-]+)/.exec(spec);
        if (m && m[1] !== pkg && !ALLOWED[pkg]!.includes(m[1]!)) wrong.push(`${rel(f)} imports ${spec}`);
      }
    }
  }
  assert.deepEqual(wrong, [], 'imports against the direction core ← runtime, gateway ← server; server, sdk ← cli, portal');
});

test('no circle of imports between files', () => {
  const graph = new Map<string, Set<string>>();
  for (const list of files.values()) {
    for (const f of list)
      graph.set(
        rel(f),
        new Set(
          specifiers(f)
            .map((s) => resolveLocal(f, s))
            .filter((x): x is string => !!x)
            .map(rel),
        ),
      );
  }
  assert.deepEqual(circles(graph), []);
});

test("no circle between the server's folders", () => {
  const src = join(ROOT, 'packages', 'server', 'src');
  const folder = (f: string) => relative(src, f).split('/')[0]!.replace(/\.ts$/, '');
  const graph = new Map<string, Set<string>>();
  for (const f of files.get('server') ?? []) {
    const from = folder(f);
    const edges = graph.get(from) ?? new Set<string>();
    graph.set(from, edges);
    for (const s of specifiers(f)) {
      const to = resolveLocal(f, s);
      if (to && folder(to) !== from) edges.add(folder(to));
    }
  }
  assert.deepEqual(circles(graph), []);
});

test('only the wiring reaches past the backend seam: routes, the E2B layer, backups and the gateway see backends/types.ts', () => {
  const src = join(ROOT, 'packages', 'server', 'src');
  // server.ts builds the backends; tenancy.ts implements the Tenancy port the local sandbox controller declares.
  const wiring = new Set([join(src, 'server.ts'), join(src, 'tenancy.ts')]);
  for (const name of ['local', 'kubernetes']) {
    const backend = join(src, 'backends', name);
    const past = (files.get('server') ?? [])
      .filter((f) => !f.startsWith(backend + '/') && !wiring.has(f))
      .filter((f) => specifiers(f).some((s) => resolveLocal(f, s)?.startsWith(backend + '/')))
      .map(rel);
    assert.deepEqual(past, [], `files outside backends/${name} that import it`);
  }
  // The backends stand beside each other: neither imports the other.
  const across = (files.get('server') ?? [])
    .filter((f) => f.startsWith(join(src, 'backends', 'kubernetes') + '/'))
    .filter((f) => specifiers(f).some((s) => resolveLocal(f, s)?.startsWith(join(src, 'backends', 'local') + '/')))
    .map(rel);
  assert.deepEqual(across, []);
});

test('the checker finds a circle', () => {
  assert.deepEqual(
    circles(
      new Map([
        ['a', new Set(['b'])],
        ['b', new Set(['c'])],
        ['c', new Set(['a'])],
        ['d', new Set(['a'])],
      ]),
    ),
    [['a', 'b', 'c']],
  );
});
