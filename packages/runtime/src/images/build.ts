import { randomUUID } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, readlink, realpath, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { MoatError } from '@moat/core';
import { run } from '../run.js';

export interface BuildStep {
  step: number;
  total: number;
  instruction: string;
}

export interface BuildRequest {
  contextDir: string;
  /** Relative to contextDir; default `Dockerfile` (then `Containerfile`). */
  dockerfile?: string;
  target?: string;
  buildArgs: Record<string, string>;
  /** A FROM naming a Moat image: an OCI layout dir (ref 'latest') to build on, or undefined if Moat has no such image (then buildah pulls it from a registry). */
  baseImage: (ref: string) => Promise<string | undefined>;
  /** certsDir is Docker's certs.d layout: <dir>/<host>/ca.crt; insecure hosts are reached over plain http. */
  registries: { authFile: string; certsDir?: string; insecure?: string[] };
  /** buildah's storage (the layer cache, kept between builds), its config and the results live under here. */
  storageDir: string;
  onStep?: (s: BuildStep) => void;
  onLog?: (line: string) => void;
  signal?: AbortSignal;
}

export interface BuiltImage {
  /** OCI layout, ref 'latest'. */
  layoutDir: string;
  cleanup(): Promise<void>;
}

/**
 * RUN steps run under `--isolation oci` (runc: crun refuses hybrid cgroup
 * hosts, and chroot isolation would run them as the host's root) in a user
 * namespace whose root is this unprivileged range. It is apart from the
 * sandboxes' range (USERNS_HOST_BASE) and from /etc/subuid's, so a build
 * never shares ids with a running sandbox. It is also the storage's default
 * mapping: layers are kept shifted into it once, and changing it needs a
 * fresh storageDir.
 */
const ID_BASE = 2 ** 31;
const ID_COUNT = 65536;

/** The image transports buildah accepts in place of a registry name: each would read host files as images. */
const TRANSPORT = /^(oci|oci-archive|docker-archive|docker-daemon|dir|containers-storage|ostree|sif|tarball|docker|atomic):/i;
const REFERENCE = /^[A-Za-z0-9][A-Za-z0-9._/:@-]*$/;
const STAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const ARG_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** The platform ARGs buildah predefines, as it sets them here, so FROM lines expand as buildah expands them. */
const ARCH = process.arch === 'x64' ? 'amd64' : process.arch;
const PLATFORM_ARGS = {
  TARGETPLATFORM: `linux/${ARCH}`,
  TARGETOS: 'linux',
  TARGETARCH: ARCH,
  TARGETVARIANT: '',
  BUILDPLATFORM: `linux/${ARCH}`,
  BUILDOS: 'linux',
  BUILDARCH: ARCH,
  BUILDVARIANT: '',
};

const badBuild = (msg: string) => new MoatError(400, 'BadBuild', msg);
const failed = (msg: string) => new MoatError(422, 'BuildFailed', msg);

export async function buildImage(r: BuildRequest): Promise<BuiltImage> {
  r.signal?.throwIfAborted();
  for (const name of Object.keys(r.buildArgs)) if (!ARG_NAME.test(name)) throw badBuild(`bad build arg name ${JSON.stringify(name)}: letters, digits and _`);
  for (const value of Object.values(r.buildArgs)) if (value.includes('\0')) throw badBuild('a build arg value holds a NUL byte');
  if (r.target !== undefined && !STAGE_NAME.test(r.target)) throw badBuild(`bad target ${JSON.stringify(r.target)}: a stage name`);
  const text = await readDockerfile(r.contextDir, r.dockerfile);
  const steps = instructions(text);
  const storage = resolve(r.storageDir);
  const work = join(storage, 'tmp', randomUUID());
  // buildah mounts each step's rootfs under TMPDIR, which the step's root (the build range) must reach:
  // under storageDir a private parent dir would stop it.
  const scratch = await mkdtemp('/var/tmp/moat-build-');
  try {
    await chmod(scratch, 0o711);
    await mkdir(work, { recursive: true });
    const { dockerfile, names } = await rewrite(text, steps, r, storage);
    await writeFile(join(work, 'Dockerfile'), dockerfile);
    const env = { ...(await configure(work, storage, r.registries)), TMPDIR: scratch };
    // Paths of this host and the local names of Moat bases never reach the user.
    const shown = (line: string) => {
      for (const [local, ref] of names) line = line.split(local).join(ref);
      return line.split(r.contextDir).join('<context>').split(storage).join('<storage>');
    };
    const globals = globalArgs(storage, work);
    const args = [
      ...globals,
      'build',
      '--signature-policy',
      join(work, 'policy.json'),
      '--authfile',
      r.registries.authFile,
      ...(r.registries.certsDir ? ['--cert-dir', join(work, 'certs')] : []),
      '--isolation',
      'oci',
      '--runtime',
      'runc',
      '--network',
      'none',
      '--layers',
      '--force-rm',
      // Always asks the registry, with this caller's login: the cache is shared, and a
      // private image another namespace pulled must not be used without access to it.
      '--pull=always',
      '--retry',
      '2',
      '--retry-delay',
      '1s',
      '--iidfile',
      join(work, 'iid'),
      '-f',
      join(work, 'Dockerfile'),
      ...(r.target ? ['--target', r.target] : []),
      ...Object.entries(r.buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
      r.contextDir,
    ];
    let current: { stage: string; step: number; total: number; instruction: string } | undefined;
    const built = await buildah(args, { env, cwd: storage, ...(r.signal ? { signal: r.signal } : {}) }, (raw) => {
      const line = shown(raw);
      const m = /^(?:\[(\d+\/\d+)\] )?STEP (\d+)\/(\d+): (.*)$/.exec(line);
      if (m) {
        current = { stage: m[1] ?? '', step: Number(m[2]), total: Number(m[3]), instruction: m[4]! };
        r.onStep?.({ step: current.step, total: current.total, instruction: current.instruction });
      }
      r.onLog?.(line);
    });
    r.signal?.throwIfAborted();
    if (built.code === 127 && built.lines.some((l) => /buildah: not found/.test(l))) throw new MoatError(503, 'BuilderMissing', 'buildah is not installed');
    if (built.code !== 0) throw buildFailure(built.lines.map(shown), current);
    const id = (await readFile(join(work, 'iid'), 'utf8')).trim();
    // The image is left untagged in the storage, as each step's cached image is: only the layout is the result.
    const layoutDir = join(storage, 'out', randomUUID());
    await mkdir(join(storage, 'out'), { recursive: true });
    const pushed = await buildah([...globals, 'push', '-q', '-D', '--signature-policy', join(work, 'policy.json'), id, `oci:${layoutDir}:latest`], {
      env,
      cwd: storage,
    });
    if (pushed.code !== 0) {
      await rm(layoutDir, { recursive: true, force: true });
      throw diskFull(pushed.lines) ?? new Error(`buildah push failed: ${pushed.lines.map(shown).join('\n')}`);
    }
    return { layoutDir, cleanup: () => rm(layoutDir, { recursive: true, force: true }) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') throw new MoatError(507, 'InsufficientStorage', `no space left for the build: ${(err as Error).message}`);
    throw err;
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The Dockerfile's text, after checking its path stays inside the context (symlinks included). */
async function readDockerfile(contextDir: string, given: string | undefined): Promise<string> {
  const names = given === undefined ? ['Dockerfile', 'Containerfile'] : [given];
  const rel = names[0]!;
  if (rel === '' || rel.includes('\0') || isAbsolute(rel) || rel.split(/[\\/]/).includes('..'))
    throw badBuild(`the Dockerfile path ${JSON.stringify(rel)} must be a relative path inside the build context`);
  const root = await realpath(contextDir);
  for (const name of names) {
    let real: string;
    try {
      real = await realpath(join(root, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const inside = relative(root, real);
    if (inside === '' || inside.startsWith(`..${sep}`) || inside === '..' || isAbsolute(inside))
      throw badBuild(`the Dockerfile path ${JSON.stringify(name)} must stay inside the build context`);
    if (!(await stat(real)).isFile()) throw failed(`${name} in the build context is not a file`);
    return readFile(real, 'utf8');
  }
  throw failed(`no ${rel} in the build context`);
}

interface Instruction {
  /** Its physical lines, first to last. */
  first: number;
  last: number;
  cmd: string;
  args: string;
}

/** The Dockerfile's instructions, continuation lines joined and comments dropped, as buildah reads them. */
function instructions(text: string): Instruction[] {
  const lines = text.split(/\r?\n/);
  let escape = '\\';
  for (const line of lines) {
    const d = /^\s*#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$/.exec(line);
    if (!d) break;
    if (d[1]!.toLowerCase() === 'escape') escape = d[2]!;
  }
  const out: Instruction[] = [];
  let cur: { first: number; parts: string[] } | undefined;
  const finish = (last: number) => {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(cur!.parts.join('').trim());
    if (m) out.push({ first: cur!.first, last, cmd: m[1]!.toUpperCase(), args: m[2]!.trim() });
    cur = undefined;
  };
  lines.forEach((line, i) => {
    if (/^\s*#/.test(line) || (cur && !line.trim())) return;
    if (!cur) {
      if (!line.trim()) return;
      cur = { first: i, parts: [] };
    }
    const t = line.trimEnd();
    if (t.endsWith(escape)) cur.parts.push(t.slice(0, -escape.length));
    else {
      cur.parts.push(t);
      finish(i);
    }
  });
  if (cur) finish(lines.length - 1);
  return out;
}

/**
 * The Dockerfile to build: each FROM (and COPY --from) naming a Moat image
 * reads that image's layout instead, through a link under storageDir (so its
 * name in buildah's storage says nothing of this host). `names` maps those
 * local names back to what the Dockerfile said.
 */
async function rewrite(text: string, steps: Instruction[], r: BuildRequest, storage: string): Promise<{ dockerfile: string; names: [string, string][] }> {
  const lines = text.split(/\r?\n/);
  const globals: Record<string, string> = { ...PLATFORM_ARGS };
  const stages = new Set<string>();
  const names: [string, string][] = [];
  const layouts = new Map<string, string | undefined>();
  let seenFrom = false;

  /** The `oci:` reference to use for an image the Dockerfile names, or undefined to leave it to buildah. */
  const base = async (word: string, what: string): Promise<string | undefined> => {
    const ref = expand(word, globals, what);
    if (TRANSPORT.test(ref)) throw badBuild(`${what}: ${JSON.stringify(ref)} names a transport; name an image`);
    if (!REFERENCE.test(ref)) throw badBuild(`${what}: ${JSON.stringify(ref)} is not an image reference`);
    if (ref === 'scratch' || stages.has(ref.toLowerCase())) return undefined;
    if (!layouts.has(ref)) layouts.set(ref, await r.baseImage(ref));
    const layout = layouts.get(ref);
    if (!layout) {
      // No unqualified-search registries are configured, so buildah would refuse it too; say so before it starts.
      const host = ref.split('/')[0]!;
      if (!ref.includes('/') || !(host.includes('.') || host.includes(':') || host === 'localhost'))
        throw failed(`${what}: no image ${ref}: Moat has none by that name, and a registry image needs its full name (e.g. docker.io/library/${ref})`);
      return undefined;
    }
    const local = `moat-base/${await manifestDigest(layout)}`;
    await link(join(storage, local), layout);
    names.push([`oci:${local}:latest`, ref], [`localhost/${local}:latest`, ref]);
    return `oci:${local}:latest`;
  };

  for (const s of steps) {
    const what = `line ${s.first + 1} (${s.cmd})`;
    const words = s.args.split(/\s+/).filter(Boolean);
    if (s.cmd === 'ARG' && !seenFrom) {
      for (const w of words) {
        const [k, ...v] = w.split('=');
        if (!ARG_NAME.test(k!)) continue;
        globals[k!] = r.buildArgs[k!] ?? (v.length ? unquote(v.join('=')) : (globals[k!] ?? ''));
      }
    } else if (s.cmd === 'FROM') {
      seenFrom = true;
      const flags = words.filter((w) => w.startsWith('--'));
      const [image, as, stage, ...rest] = words.filter((w) => !w.startsWith('--'));
      if (!image) continue; // buildah reports the syntax error, as it does a bad AS below
      const ref = await base(image, what);
      if (as !== undefined && (as.toLowerCase() !== 'as' || !stage || rest.length)) continue;
      if (ref) setLine(lines, s, ['FROM', ...flags, ref, ...(stage ? ['AS', stage] : [])].join(' '));
      if (stage) stages.add(stage.toLowerCase());
    } else if (s.cmd === 'COPY' || s.cmd === 'ADD') {
      const flags = words.filter((w) => w.startsWith('--'));
      const from = flags.find((f) => f.startsWith('--from='))?.slice(7);
      if (s.cmd === 'ADD' && sources(s.args).some((src) => /^(https?|git|ssh):\/\/|^git@/i.test(src)))
        throw badBuild(`${what}: ADD from a URL is not supported (builds have no network): put the file in the build context`);
      if (from !== undefined && !/^\d+$/.test(from)) {
        const ref = await base(from, what);
        if (ref) setLine(lines, s, `${s.cmd} ${s.args.replace(`--from=${from}`, `--from=${ref}`)}`);
      }
    } else if (s.cmd === 'RUN') {
      for (const m of s.args.matchAll(/--mount=(\S+)/g))
        for (const opt of m[1]!.split(',')) {
          const [k, v = ''] = opt.split('=');
          if (k === 'from' && !/^\d+$/.test(v)) {
            const ref = expand(v, globals, what);
            if (ref !== 'scratch' && !stages.has(ref.toLowerCase())) throw badBuild(`${what}: RUN --mount from= must name an earlier stage`);
          }
        }
    }
  }
  if (r.target !== undefined && !stages.has(r.target.toLowerCase())) throw badBuild(`no stage named ${r.target} in the Dockerfile`);
  return { dockerfile: lines.join('\n'), names };
}

/** The instruction as one line, its continuation lines left blank so line numbers stay. */
function setLine(lines: string[], s: Instruction, line: string) {
  lines[s.first] = line;
  for (let i = s.first + 1; i <= s.last; i++) lines[i] = '';
}

/** ADD/COPY's sources: its words after the flags, or its JSON array, without the destination. */
function sources(args: string): string[] {
  const rest = args.replace(/^(--\S+\s+)*/, '');
  let words: unknown = undefined;
  if (rest.startsWith('[')) {
    try {
      words = JSON.parse(rest);
    } catch {}
  }
  const list = Array.isArray(words) ? words.map(String) : rest.split(/\s+/);
  return list.slice(0, -1);
}

/** `$X`, `${X}`, `${X:-word}`, `${X:+word}` as buildah expands them in FROM; anything it might read otherwise is refused. */
function expand(word: string, vars: Record<string, string>, what: string): string {
  let out = '';
  for (let i = 0; i < word.length;) {
    const c = word[i]!;
    if (c === '"' || c === "'" || c === '\\') throw badBuild(`${what}: quotes and escapes are not supported in an image name`);
    if (c !== '$') {
      out += c;
      i++;
      continue;
    }
    const plain = /^\$([A-Za-z_][A-Za-z0-9_]*)/.exec(word.slice(i));
    if (plain) {
      out += vars[plain[1]!] ?? '';
      i += plain[0].length;
      continue;
    }
    const close = closing(word, i + 1);
    const inner = close < 0 ? undefined : /^([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([\s\S]*))?$/.exec(word.slice(i + 2, close));
    if (!inner) throw badBuild(`${what}: cannot expand ${JSON.stringify(word)}`);
    const value = vars[inner[1]!] ?? '';
    if (inner[2] === '-') out += value || expand(inner[3]!, vars, what);
    else if (inner[2] === '+') out += value ? expand(inner[3]!, vars, what) : '';
    else out += value;
    i = close + 1;
  }
  return out;
}

/** The index of the `}` closing the `${` at `open`, or -1. */
function closing(word: string, open: number): number {
  if (word[open] !== '{') return -1;
  let depth = 0;
  for (let i = open; i < word.length; i++) {
    if (word[i] === '{') depth++;
    else if (word[i] === '}' && --depth === 0) return i;
  }
  return -1;
}

const unquote = (v: string) => (/^(["']).*\1$/.test(v) ? v.slice(1, -1) : v);

async function manifestDigest(layout: string): Promise<string> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  const m = index.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === 'latest') ?? index.manifests[0];
  if (!m || !/^sha256:[0-9a-f]{64}$/.test(m.digest)) throw new Error(`${layout} is not an OCI layout with a 'latest' image`);
  return m.digest.slice(7);
}

/** `path` as a link to `target`, replaced atomically: builds on the same image share it. */
async function link(path: string, target: string) {
  if (
    await readlink(path).then(
      (t) => t === target,
      () => false,
    )
  )
    return;
  await mkdir(join(path, '..'), { recursive: true });
  const tmp = `${path}.${randomUUID()}`;
  await symlink(target, tmp);
  await rename(tmp, path).catch(async (err) => {
    await unlink(tmp).catch(() => {});
    throw err;
  });
}

function globalArgs(storage: string, work: string): string[] {
  const map = `0:${ID_BASE}:${ID_COUNT}`;
  return [
    ...['--root', join(storage, 'root'), '--runroot', join(storage, 'run')],
    ...['--storage-driver', 'overlay', '--storage-opt', 'overlay.skip_mount_home=true'],
    ...['--registries-conf', join(work, 'registries.conf'), '--registries-conf-dir', join(work, 'registries.d')],
    ...['--short-name-alias-conf', join(work, 'aliases.conf')],
    ...['--userns-uid-map', map, '--userns-gid-map', map],
  ];
}

/** buildah's configuration, all of it under the build's work dir: nothing of the host's /etc/containers or root's home applies. */
async function configure(work: string, storage: string, reg: BuildRequest['registries']): Promise<NodeJS.ProcessEnv> {
  const toml = (s: string) => JSON.stringify(s);
  await mkdir(join(work, 'registries.d'), { recursive: true });
  await writeFile(join(work, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const insecure = (reg.insecure ?? []).map((h) => `[[registry]]\nlocation = ${toml(h)}\ninsecure = true\n`);
  // No search registries: a short name never quietly resolves to Docker Hub.
  await writeFile(join(work, 'registries.conf'), ['unqualified-search-registries = []', 'short-name-mode = "enforcing"', '', ...insecure].join('\n'));
  await writeFile(join(work, 'aliases.conf'), '');
  await writeFile(join(work, 'mounts.conf'), '');
  await writeFile(join(work, 'containers.conf'), `[containers]\ndefault_mounts_file = ${toml(join(work, 'mounts.conf'))}\n`);
  await writeFile(
    join(work, 'storage.conf'),
    `[storage]\ndriver = "overlay"\ngraphroot = ${toml(join(storage, 'root'))}\nrunroot = ${toml(join(storage, 'run'))}\n`,
  );
  // containers/storage 1.44 double-shifts ids when a layer committed through an idmapped
  // mount is mounted again (a second RUN then sees its files owned by nobody). Its cached
  // probe result turns idmapped mounts off; with layers stored in the build range, none are needed.
  const probes = join(storage, 'run', 'overlay');
  await mkdir(probes, { recursive: true });
  await rm(join(probes, 'idmapped-lower-dir-true'), { force: true });
  await writeFile(join(probes, 'idmapped-lower-dir-false'), 'disabled: layers are stored in the build id range\n');
  if (reg.certsDir) await gatherCAs(reg.certsDir, join(work, 'certs'));
  return {
    PATH: process.env.PATH,
    HOME: work,
    CONTAINERS_CONF: join(work, 'containers.conf'),
    CONTAINERS_STORAGE_CONF: join(work, 'storage.conf'),
    REGISTRY_AUTH_FILE: reg.authFile,
  };
}

/** buildah's --cert-dir is one directory for all registries: every host's CAs from a certs.d layout. */
async function gatherCAs(certsDir: string, out: string) {
  await mkdir(out, { recursive: true });
  for (const host of await readdir(certsDir, { withFileTypes: true }).catch(() => [])) {
    if (!host.isDirectory()) continue;
    for (const f of await readdir(join(certsDir, host.name)))
      if (f.endsWith('.crt')) await copyFile(join(certsDir, host.name, f), join(out, `${host.name.replace(/[^A-Za-z0-9.-]/g, '_')}-${f}`));
  }
}

/**
 * Runs buildah with stdout and stderr on one pipe, so its lines come in the
 * order it wrote them. An abort sends SIGTERM, on which buildah stops the
 * running step's container and removes it; SIGKILL follows if it lingers.
 */
async function buildah(
  args: string[],
  o: { env: NodeJS.ProcessEnv; cwd: string; signal?: AbortSignal },
  onLine: (line: string) => void = () => {},
): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  let pid: number | undefined;
  let killer: NodeJS.Timeout | undefined;
  const kill = (sig: NodeJS.Signals) => {
    try {
      if (pid) process.kill(pid, sig);
    } catch {}
  };
  const onAbort = () => {
    kill('SIGTERM');
    killer = setTimeout(() => kill('SIGKILL'), 10_000);
  };
  try {
    const res = await run('sh', ['-c', 'echo "pid $$" >&2; exec "$@" 1>&2', 'sh', 'buildah', ...args], {
      env: o.env,
      cwd: o.cwd,
      allowFail: true,
      onStderrLine: (line) => {
        if (pid === undefined) {
          pid = Number(/^pid (\d+)$/.exec(line)?.[1]);
          if (o.signal?.aborted) onAbort();
          else o.signal?.addEventListener('abort', onAbort, { once: true });
          return;
        }
        lines.push(line);
        if (lines.length > 200) lines.shift();
        onLine(line);
      },
    });
    return { code: res.code, lines };
  } finally {
    clearTimeout(killer);
    o.signal?.removeEventListener('abort', onAbort);
  }
}

function diskFull(lines: string[]): MoatError | undefined {
  const line = lines.find((l) => /no space left on device|disk quota exceeded/i.test(l));
  return line ? new MoatError(507, 'InsufficientStorage', `the build ran out of disk space: ${line.replace(/^Error: /, '')}`) : undefined;
}

/** The failed step and buildah's reason, e.g. `step 3/5 (RUN false) failed: exit status 1`. */
function buildFailure(lines: string[], step: { stage: string; step: number; total: number; instruction: string } | undefined): MoatError {
  const full = diskFull(lines);
  if (full) return full;
  const error = [...lines].reverse().find((l) => l.startsWith('Error: ')) ?? lines[lines.length - 1] ?? 'buildah failed';
  const why = error
    .replace(/^Error: /, '')
    .replace(/^building at STEP "[^\n]*?": /, '')
    .replace(/^while running runtime: /, '');
  if (!step) return failed(`the build failed: ${why}`);
  const stage = step.stage && step.stage !== '1/1' ? `stage ${step.stage} ` : '';
  return failed(`${stage}step ${step.step}/${step.total} (${step.instruction}) failed: ${why}`);
}
