import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MoatError } from '@moat/core';
import { run } from '../run.js';
import { USERNS_SIZE } from '../userns.js';

export interface BuildStep {
  step: number;
  total: number;
  instruction: string;
}

export interface BuildRequest {
  /** The unpacked build context (already checked by the caller's unpacker). */
  contextDir: string;
  /** Relative to contextDir; `Dockerfile` by default. */
  dockerfile?: string;
  target?: string;
  buildArgs: Record<string, string>;
  /** An OCI layout (ref `latest`) for a FROM that names a Moat image; undefined lets the builder pull it. */
  baseImage: (ref: string) => Promise<string | undefined>;
  registries: { authFile: string; certsDir?: string; insecure?: string[] };
  /** The builder's own storage (never the host's /var/lib/containers). */
  storageDir: string;
  onStep?: (s: BuildStep) => void;
  onLog?: (line: string) => void;
  signal?: AbortSignal;
}

export interface BuiltImage {
  /** The result as an OCI layout, ref `latest`. */
  layoutDir: string;
  cleanup(): Promise<void>;
}

/**
 * RUN steps run in runc containers inside a user namespace of their own: root
 * in a step is this unprivileged host range (above the sandboxes' ranges), and
 * they have no network. Without `--layers`: buildah 1.28 cannot COPY --from a
 * cached stage under a user namespace, so every build starts fresh.
 */
const BUILD_ID_BASE = 1 << 25;

const badBuild = (msg: string) => new MoatError(400, 'BadBuild', msg);
const failed = (msg: string) => new MoatError(422, 'BuildFailed', msg);

export async function buildImage(r: BuildRequest): Promise<BuiltImage> {
  const dockerfile = await dockerfileIn(r.contextDir, r.dockerfile ?? 'Dockerfile');
  for (const k of Object.keys(r.buildArgs)) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw badBuild(`the build arg name ${JSON.stringify(k)} is not valid`);
  if (r.target !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(r.target))
    throw badBuild(`the target ${JSON.stringify(r.target)} is not a stage name`);
  const b = await builder(r);
  const work = join(r.storageDir, 'work', randomUUID());
  await mkdir(work, { recursive: true });
  const tag = `localhost/moat-build/${randomUUID()}:latest`;
  const cleanup = async () => {
    await rm(work, { recursive: true, force: true });
    await b.buildah(['rmi', '-f', tag], { allowFail: true });
  };
  try {
    const rewritten = join(work, 'Dockerfile');
    await writeFile(rewritten, await withLocalBases(await readFile(dockerfile, 'utf8'), r, b));
    let step: BuildStep | undefined;
    const errors: string[] = [];
    const code = await b.stream(
      [
        'build',
        '--signature-policy',
        b.policy,
        '--registries-conf',
        b.registriesConf,
        '--authfile',
        r.registries.authFile,
        '--pull=false',
        '--isolation',
        'oci',
        '--network',
        'none',
        '--userns-uid-map',
        `0:${BUILD_ID_BASE}:${USERNS_SIZE}`,
        '--userns-gid-map',
        `0:${BUILD_ID_BASE}:${USERNS_SIZE}`,
        '-f',
        rewritten,
        '-t',
        tag,
        ...(r.target ? ['--target', r.target] : []),
        ...Object.entries(r.buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
        r.contextDir,
      ],
      (line) => {
        const m = /STEP (\d+)\/(\d+): (.*)$/.exec(line);
        if (m) {
          step = { step: Number(m[1]), total: Number(m[2]), instruction: m[3]! };
          r.onStep?.(step);
        }
        if (/^Error: |^error /.test(line)) errors.push(line.replace(/^Error: /, ''));
        r.onLog?.(line);
      },
      r.signal,
    );
    if (code !== 0) {
      const why = errors.at(-1) ?? `buildah exited with ${code}`;
      if (/no space left on device/i.test(why)) throw new MoatError(507, 'InsufficientStorage', `the build ran out of disk space: ${why}`);
      throw failed(step && /building at STEP/.test(why) ? `step ${step.step}/${step.total} (${step.instruction}) failed: ${why}` : `the build failed: ${why}`);
    }
    const layoutDir = join(work, 'out');
    await b.buildah(['push', '--signature-policy', b.policy, '--disable-compression', tag, `oci:${layoutDir}:latest`]);
    return { layoutDir, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** The Dockerfile, which must be a file inside the context. */
async function dockerfileIn(context: string, rel: string): Promise<string> {
  if (rel.startsWith('/') || rel.split('/').includes('..')) throw badBuild(`the Dockerfile path ${JSON.stringify(rel)} must be inside the build context`);
  const root = await realpath(context);
  const real = await realpath(join(root, rel)).catch(() => undefined);
  if (!real) throw failed(`the build context has no ${rel}`);
  if (!real.startsWith(`${root}/`) || !(await stat(real)).isFile())
    throw badBuild(`the Dockerfile path ${JSON.stringify(rel)} must be a file inside the build context`);
  return real;
}

/** Each FROM naming a Moat image is loaded into the builder's storage and named `localhost/moat-base/<digest>`. */
async function withLocalBases(text: string, r: BuildRequest, b: Builder): Promise<string> {
  const stages = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*FROM\s+)((?:--\S+\s+)*)(\S+)(\s+AS\s+(\S+))?\s*$/i.exec(lines[i]!);
    if (!m) continue;
    const image = m[3]!;
    if (m[5]) stages.add(m[5].toLowerCase());
    if (image === 'scratch' || image.includes('$') || stages.has(image.toLowerCase())) continue;
    const layout = await r.baseImage(image);
    if (!layout) continue;
    const name = `localhost/moat-base/${createHash('sha256').update(layout).digest('hex').slice(0, 32)}:latest`;
    const known = await b.buildah(['images', '-q', name], { allowFail: true });
    if (known.code !== 0 || !known.stdout.trim()) {
      r.onLog?.(`loading ${image} into the builder`);
      const id = (await b.buildah(['pull', '-q', '--signature-policy', b.policy, `oci:${layout}:latest`])).stdout.trim().split('\n').at(-1)!;
      await b.buildah(['tag', id, name]);
      // buildah names an image pulled from a layout after its path: only our name is kept.
      await b.buildah(['untag', id, `localhost${layout}:latest`], { allowFail: true });
    }
    lines[i] = `${m[1]}${m[2]}${name}${m[4] ?? ''}`;
  }
  return lines.join('\n');
}

type Builder = Awaited<ReturnType<typeof builder>>;

/** buildah with its storage, signature policy and registries under `storageDir`. */
async function builder(r: BuildRequest) {
  const dir = r.storageDir;
  await mkdir(dir, { recursive: true });
  const policy = join(dir, 'policy.json');
  const registriesConf = join(dir, 'registries.conf');
  // Images are checked by digest, not signature; no short-name search, so `FROM python` never goes to Docker Hub unasked.
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await writeFile(
    registriesConf,
    [
      'unqualified-search-registries = []',
      'short-name-mode = "disabled"',
      ...(r.registries.insecure ?? []).map((h) => `[[registry]]\nlocation = ${JSON.stringify(h)}\ninsecure = true`),
    ].join('\n') + '\n',
  );
  const global = ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--storage-driver', 'overlay'];
  return {
    policy,
    registriesConf,
    buildah: (args: string[], o: { allowFail?: boolean } = {}) => run('buildah', [...global, ...args], o),
    stream: (args: string[], onLine: (line: string) => void, signal?: AbortSignal) =>
      new Promise<number>((resolve, reject) => {
        const child = spawn('buildah', [...global, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal, killSignal: 'SIGKILL' } : {}) });
        for (const s of [child.stdout, child.stderr]) {
          let partial = '';
          s.on('data', (d: Buffer) => {
            const parts = (partial + d.toString()).split(/\r?\n/);
            partial = parts.pop() ?? '';
            for (const l of parts) if (l.trim()) onLine(l);
          });
          s.on('end', () => partial.trim() && onLine(partial));
        }
        child.on('error', (err: NodeJS.ErrnoException) =>
          reject(err.code === 'ENOENT' ? new MoatError(503, 'BuilderMissing', 'buildah is not installed (apt install buildah)') : err),
        );
        child.on('close', (code) => resolve(code ?? -1));
      }),
  };
}
