/**
 * Copies what a Moat server needs at runtime out of a built checkout (`npm run build`) into DIR, laid out as
 * the checkout is (DIR/packages/..., DIR/node_modules/...), so the same paths work: the packages' package.json
 * and dist, the server's built-in templates, moat-init, the portal's build, and the production node_modules.
 * Both Moat images use it: deploy/kubernetes/Dockerfile and the dev cluster's (deploy/dev-cluster/images.sh).
 *
 *   node --import tsx scripts/stage-moat.ts DIR
 *
 * The node_modules are the lock file's closure of the CLI's dependencies, copied from the installed tree (so
 * native addons come as they were built), without what only development reads: type declarations, source maps,
 * and the sources and intermediate files of node-gyp builds.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, type CopySyncOptions } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface LockEntry {
  link?: boolean;
  resolved?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The workspace `moat` runs; everything it loads is reachable from it. */
const ENTRY = 'packages/cli';
/** The portal's dependencies are bundled into its dist by vite: the server only serves those files. */
const BUNDLED = new Set(['packages/portal']);
/** Besides package.json and dist, per workspace. */
const EXTRA: Record<string, string[]> = { 'packages/server': ['templates'] };
/** Not a workspace: the agent that Moat copies into sandbox pods (MOAT_INIT_BINARY). */
const AGENT = ['packages/agent/build/moat-init'];

/** Where Node finds `name` from the package at lock path `from`: its own node_modules, then each one above it. */
function resolve(packages: Record<string, LockEntry>, name: string, from: string): string | undefined {
  for (let dir = from; ;) {
    const key = dir ? `${dir}/node_modules/${name}` : `node_modules/${name}`;
    if (packages[key]) return key;
    if (!dir) return undefined;
    const up = dir.lastIndexOf('/node_modules/');
    dir = up >= 0 ? dir.slice(0, up) : '';
  }
}

/** Lock paths of the workspaces and packages `entry` needs at runtime; links (node_modules/@moat/x) included. */
function closure(packages: Record<string, LockEntry>, entry: string): Set<string> {
  const seen = new Set<string>();
  const visit = (path: string) => {
    if (seen.has(path)) return;
    seen.add(path);
    const e = packages[path]!;
    if (e.link) return visit(e.resolved!);
    if (BUNDLED.has(path)) return;
    const optional = new Set([
      ...Object.keys(e.optionalDependencies ?? {}),
      ...Object.entries(e.peerDependenciesMeta ?? {})
        .filter(([, m]) => m.optional)
        .map(([n]) => n),
    ]);
    for (const name of new Set([
      ...Object.keys(e.dependencies ?? {}),
      ...Object.keys(e.optionalDependencies ?? {}),
      ...Object.keys(e.peerDependencies ?? {}),
    ])) {
      const found = resolve(packages, name, path);
      if (found) visit(found);
      else if (!optional.has(name)) throw new Error(`package-lock.json: ${path} needs ${name}, which is not in the lock file (run npm install)`);
    }
  };
  visit(entry);
  return seen;
}

const DEV_ONLY = /\.(d\.[cm]?ts|map)$/;

/** cpSync's filter for one installed package at `src`: not its nested node_modules (their packages are copied on their own). */
function packageFilter(src: string): CopySyncOptions['filter'] {
  const gyp = existsSync(join(src, 'binding.gyp'));
  return (from) => {
    const rel = relative(src, from);
    if (rel === '') return true;
    if (rel === 'node_modules' || rel.startsWith('node_modules/') || DEV_ONLY.test(from)) return false;
    // node-gyp: the addon is build/Release/*.node; its C sources and object files are not loaded.
    if (gyp && (rel === 'deps' || rel === 'src' || rel.startsWith('deps/') || rel.startsWith('src/'))) return false;
    if (gyp && rel.startsWith('build')) return ['build', 'build/Release'].includes(rel) || /^build\/Release\/[^/]+\.node$/.test(rel);
    return true;
  };
}

function stage(out: string): void {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  for (const f of [...AGENT, 'packages/cli/dist/main.js', 'packages/portal/dist/index.html'])
    if (!existsSync(join(ROOT, f))) throw new Error(`${f} is missing: build Moat first (npm run build)`);
  mkdirSync(out, { recursive: true });
  for (const path of closure(lock.packages, ENTRY)) {
    const entry = lock.packages[path]!;
    const to = join(out, path);
    mkdirSync(dirname(to), { recursive: true });
    if (entry.link) symlinkSync(relative(dirname(to), join(out, entry.resolved!)), to);
    else if (path.startsWith('node_modules/')) cpSync(join(ROOT, path), to, { recursive: true, filter: packageFilter(join(ROOT, path)) });
    else
      for (const f of ['package.json', 'dist', ...(EXTRA[path] ?? [])])
        cpSync(join(ROOT, path, f), join(to, f), { recursive: true, filter: (from) => !DEV_ONLY.test(from) });
  }
  for (const f of AGENT) cpSync(join(ROOT, f), join(out, f));
}

const out = process.argv[2];
if (!out) throw new Error('usage: node --import tsx scripts/stage-moat.ts DIR');
if (existsSync(out) && readdirSync(out).length > 0) throw new Error(`${out} is not empty`);
stage(out);
