import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile, lstat, lchown, chmod, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { notFound } from '@moat/core';
import { run } from '../run.js';
import { hostUid } from '../userns.js';
import { IMAGE_CATALOG, type ImageDefinition } from './catalog.js';

export interface Image {
  name: string;
  digest: string;
  /** Read-only root filesystem, ids shifted into the sandbox user namespace range. */
  rootfs: string;
  sizeBytes: number;
  createdAt: string;
  packages: string[];
}

export type Progress = (line: string) => void;

/**
 * Content-addressed image store: `sha256/<hex>/rootfs` holds an image by the
 * digest of the tarball it was unpacked from; `refs/<name>` names a digest.
 * Sandboxes record the digest, so rebuilding `base` never changes a running one.
 */
export class ImageStore {
  private building = new Map<string, Promise<Image>>();

  constructor(readonly dir: string) {}

  async list(): Promise<Image[]> {
    const names = await readdir(join(this.dir, 'refs')).catch(() => [] as string[]);
    const images = await Promise.all(names.map((n) => this.get(n).catch(() => undefined)));
    return images.filter((i): i is Image => !!i);
  }

  /** Known names: built images plus the catalog's buildable ones. */
  async knownNames(): Promise<string[]> {
    const built = (await this.list()).map((i) => i.name);
    return [...new Set([...built, ...Object.keys(IMAGE_CATALOG)])].sort();
  }

  async get(name: string): Promise<Image> {
    const digest = (await readFile(join(this.dir, 'refs', name), 'utf8').catch(() => '')).trim();
    if (!digest) throw notFound(`image "${name}" is not built`);
    return this.byDigest(digest);
  }

  async byDigest(digest: string): Promise<Image> {
    const dir = this.digestDir(digest);
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8').catch(() => 'null'));
    if (!meta) throw notFound(`image ${digest} is not in the store`);
    return { ...meta, rootfs: join(dir, 'rootfs') };
  }

  /** The image by name, building it from the catalog the first time. */
  async ensure(name: string, progress: Progress = () => {}): Promise<Image> {
    const existing = await this.get(name).catch(() => undefined);
    if (existing) return existing;
    const def = IMAGE_CATALOG[name];
    if (!def) {
      const known = await this.knownNames();
      throw notFound(`image "${name}" not found; known images: ${known.join(', ')}`, { kind: 'images', name, known });
    }
    let p = this.building.get(name);
    if (!p) {
      p = this.build(def, progress).finally(() => this.building.delete(name));
      this.building.set(name, p);
    }
    return p;
  }

  async build(def: ImageDefinition, progress: Progress = () => {}): Promise<Image> {
    const tmp = join(this.dir, 'tmp', `${def.name}-${process.pid}-${Date.now()}`);
    await mkdir(tmp, { recursive: true });
    try {
      const tar = join(tmp, 'rootfs.tar');
      progress(`building image "${def.name}": debian ${def.suite} + ${def.packages.join(', ')} (mmdebstrap, about a minute)`);
      const started = Date.now();
      await run(
        'mmdebstrap',
        [
          '--variant=minbase',
          `--include=${def.packages.join(',')}`,
          // An unprivileged user for agents that should not run as root, as E2B images have.
          '--customize-hook=chroot "$1" sh -c "echo user:x:1000:1000::/home/user:/bin/bash >>/etc/passwd; echo user:x:1000: >>/etc/group; echo user:*:19000:0:99999:7::: >>/etc/shadow; mkdir -p /home/user /data; chown 1000:1000 /home/user"',
          '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
          def.suite,
          tar,
        ],
        { env: { ...process.env, SOURCE_DATE_EPOCH: '1700000000' }, onStderrLine: (l) => progress(`  ${l}`) },
      );
      progress(`  mmdebstrap done in ${((Date.now() - started) / 1000).toFixed(1)} s; unpacking`);
      const digest = `sha256:${await sha256File(tar)}`;
      const dir = this.digestDir(digest);
      if (!(await exists(join(dir, 'meta.json')))) {
        const rootfs = join(tmp, 'rootfs');
        await mkdir(rootfs);
        await run('tar', ['-xpf', tar, '-C', rootfs, '--numeric-owner']);
        await shiftOwnership(rootfs);
        const sizeBytes = (await stat(tar)).size;
        await mkdir(dir, { recursive: true });
        await rename(rootfs, join(dir, 'rootfs'));
        const meta = { name: def.name, digest, sizeBytes, createdAt: new Date().toISOString(), packages: def.packages };
        await writeFile(join(dir, 'meta.json'), JSON.stringify(meta, null, 2));
      }
      await mkdir(join(this.dir, 'refs'), { recursive: true });
      await writeFile(join(this.dir, 'refs', `${def.name}.tmp`), digest);
      await rename(join(this.dir, 'refs', `${def.name}.tmp`), join(this.dir, 'refs', def.name));
      progress(`image "${def.name}" ready: ${digest}`);
      return this.byDigest(digest);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  private digestDir(digest: string): string {
    const hex = /^sha256:([0-9a-f]{64})$/.exec(digest)?.[1];
    if (!hex) throw notFound(`malformed image digest ${digest}`);
    return join(this.dir, 'sha256', hex);
  }
}

async function exists(p: string) {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

/** Move every file's owner into the sandbox user-namespace range; chown clears set-id bits, so restore them. */
async function shiftOwnership(root: string): Promise<void> {
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p);
    await lchown(p, hostUid(st.uid), hostUid(st.gid));
    if (!st.isSymbolicLink() && st.mode & 0o6000) await chmod(p, st.mode & 0o7777);
    if (st.isDirectory()) {
      for (const e of await readdir(p)) await walk(join(p, e));
    }
  };
  await walk(root);
}
