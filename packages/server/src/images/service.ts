import { rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { MoatError, conflict, forbidden, notFound, type Container } from '@moat/core';
import {
  IMAGE_CATALOG,
  RegistryClient,
  buildImage,
  exportLayout,
  openArchive,
  type Image,
  type ImageSource,
  type ImageStore,
  type PullEvent,
  type RunConfig,
} from '@moat/runtime';
import type { Logger } from 'pino';
import type { Quotas } from '../identity/quotas.js';
import type { ImageTable } from '../store/schema.js';
import type { Store } from '../store/store.js';
import { unpackContext, writeAuthFile } from './build.js';
import { imageName, pullPolicy, type ImageName } from './names.js';
import { normalize, type RegistryLogins } from './registry-logins.js';

/** What the API shows of an image. */
export interface ImageInfo {
  namespace: string;
  name: string;
  digest: string;
  source: ImageTable['source'];
  public: boolean;
  sizeBytes: number;
  createdAt: string;
  updatedAt: string;
  config: Pick<RunConfig, 'Entrypoint' | 'Cmd' | 'Env' | 'WorkingDir' | 'User' | 'ExposedPorts' | 'Labels'>;
  layers: number;
}

export interface ImageServiceOptions {
  /** Docker's certs.d convention: `<dir>/<host[:port]>/ca.crt` is the CA a registry's certificate is checked against. */
  certsDir?: string;
  /** Registries reached over plain HTTP (loopback ones may be, as in Docker). */
  insecureRegistries?: string[];
  /** Start collecting unused pulled images when the store's filesystem is this full (percent), down to `gcLowPercent`. */
  gcHighPercent?: number;
  gcLowPercent?: number;
  /** Pull names without a registry host from Docker Hub, as Docker does (default true). */
  unqualifiedPulls?: boolean;
}

/** The catalog's images are everyone's: they live in no namespace. */
const CATALOG_NS = '';

/**
 * Names of images per namespace, over the host's content store (the runtime's
 * ImageStore). A namespace sees its own images, the catalog's and those an
 * admin published; a sandbox records the digest its image resolved to.
 */
export class ImageService {
  constructor(
    private readonly store: Store,
    readonly content: ImageStore,
    readonly logins: RegistryLogins,
    private readonly quotas: Quotas,
    private readonly log: Logger,
    private readonly opts: ImageServiceOptions = {},
  ) {}

  private get db() {
    return this.store.db;
  }

  /** The images `namespaces` see (undefined: all of them, for admins), with the catalog's that are built. */
  async list(namespaces?: string[]): Promise<ImageInfo[]> {
    let q = this.db.selectFrom('images').selectAll();
    if (namespaces) q = q.where((eb) => eb.or([eb('namespace', 'in', namespaces.length ? namespaces : ['']), eb('public', '=', 1)]));
    const rows = await q.orderBy('namespace').orderBy('name').execute();
    return Promise.all(rows.map((r) => this.info(r)));
  }

  /** One image by the name a namespace knows it by. */
  async get(namespace: string, name: string): Promise<ImageInfo> {
    return this.info(await this.row(namespace, imageName(name)));
  }

  /**
   * Pins the image a container names to a digest, pulling the manifest when
   * the pull policy says so (not the layers: `materialize` does that at start).
   */
  async resolve(namespace: string, container: Pick<Container, 'image' | 'imagePullPolicy'>): Promise<{ name: string; digest: string }> {
    const name = imageName(container.image);
    if (!name.ref) return { name: name.key, digest: (await this.catalog(name.key)).digest };
    const found = await this.find(namespace, name);
    const policy = pullPolicy(name, container.imagePullPolicy);
    // What was built or imported here has nowhere to be pulled from: it is used as it is.
    if (found && (found.source !== 'pull' || policy !== 'Always')) return { name: name.key, digest: found.digest };
    if (policy === 'Never') throw await this.notFound(namespace, name, '; imagePullPolicy is Never');
    try {
      const image = await this.pull(namespace, container.image);
      return { name: name.key, digest: image.digest };
    } catch (err) {
      if (!name.qualified && this.opts.unqualifiedPulls === false) throw err;
      if (err instanceof MoatError && found === undefined && isLocalLooking(container.image)) {
        const missing = await this.notFound(namespace, name, `; pulling it failed: ${err.message}`);
        throw err.code === 404 ? missing : new MoatError(err.code, err.reason, missing.message, missing.details);
      }
      throw err;
    }
  }

  /** The image a sandbox pinned, ready to mount: its layers are pulled again if they were collected meanwhile. */
  async materialize(namespace: string, pinned: { name: string; digest: string }, progress?: (line: string) => void): Promise<Image> {
    if (await this.content.has(pinned.digest)) return this.content.byDigest(pinned.digest);
    const name = imageName(pinned.name);
    if (!name.ref) return this.catalog(name.key, progress);
    if (name.ref.registry === 'moat.local') throw notFound(`image ${pinned.name} (${pinned.digest}) is no longer in the image store`);
    const source = this.registry(namespace).source({ ...name.ref, tag: undefined, digest: pinned.digest });
    return this.content.pull(source, { name: pinned.name, onEvent: (e) => progress?.(describeEvent(e)) });
  }

  async pull(namespace: string, reference: string, o: { onEvent?: (e: PullEvent) => void; signal?: AbortSignal } = {}): Promise<Image> {
    const name = imageName(reference);
    if (!name.ref) return this.catalog(name.key);
    if (!name.qualified && this.opts.unqualifiedPulls === false)
      throw await this.notFound(namespace, name, '; names without a registry host are not pulled from Docker Hub on this server');
    const source = this.registry(namespace).source(name.ref);
    return this.add(namespace, name.key, 'pull', source, o);
  }

  /** Every image of a `docker save` or OCI-layout archive, each under its tag (or `tag` for a one-image archive). */
  async importArchive(namespace: string, file: string, o: { tag?: string; onEvent?: (e: PullEvent) => void } = {}): Promise<ImageInfo[]> {
    const archive = await openArchive(file);
    try {
      if (o.tag && archive.images.length !== 1)
        throw new MoatError(422, 'BadArchive', `the archive holds ${archive.images.length} images: --tag names only one`);
      const out: ImageInfo[] = [];
      for (const source of archive.images) {
        const tag = o.tag ?? source.name;
        if (!tag) throw new MoatError(422, 'BadArchive', 'an image in the archive has no tag: give one with --tag');
        await this.add(namespace, imageName(tag).key, 'import', source, o);
        out.push(await this.get(namespace, tag));
      }
      return out;
    } finally {
      await archive.close();
    }
  }

  /** Builds a Dockerfile from a context tar; the steps and log go to `emit` as they come. */
  async build(
    namespace: string,
    r: { contextTar: string; tag: string; dockerfile?: string; target?: string; buildArgs: Record<string, string> },
    o: { emit: (e: object) => void; signal?: AbortSignal },
  ): Promise<Image> {
    const key = imageName(r.tag).key;
    const tmp = await this.content.tmpDir();
    try {
      const context = join(tmp, 'context');
      await unpackContext(r.contextTar, context);
      const authFile = join(tmp, 'auth.json');
      await writeAuthFile(authFile, await this.logins.all(namespace));
      const built = await buildImage({
        contextDir: context,
        ...(r.dockerfile ? { dockerfile: r.dockerfile } : {}),
        ...(r.target ? { target: r.target } : {}),
        buildArgs: r.buildArgs,
        baseImage: (ref) => this.baseLayout(namespace, ref),
        registries: {
          authFile,
          ...(this.opts.certsDir ? { certsDir: this.opts.certsDir } : {}),
          ...(this.opts.insecureRegistries ? { insecure: this.opts.insecureRegistries } : {}),
        },
        storageDir: join(this.content.dir, 'build'),
        onStep: (s) => o.emit({ type: 'step', ...s }),
        onLog: (line) => o.emit({ type: 'log', line }),
        ...(o.signal ? { signal: o.signal } : {}),
      });
      try {
        const archive = await openArchive(built.layoutDir);
        try {
          return await this.add(namespace, key, 'build', { ...archive.images[0]!, name: key }, { onEvent: o.emit });
        } finally {
          await archive.close();
        }
      } finally {
        await built.cleanup();
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /** A FROM that names one of the namespace's images (or the catalog's) builds on it; others the builder pulls. */
  private async baseLayout(namespace: string, ref: string): Promise<string | undefined> {
    let name: ImageName;
    try {
      name = imageName(ref);
    } catch {
      return undefined;
    }
    const digest = name.ref ? (await this.find(namespace, name))?.digest : (await this.catalog(name.key)).digest;
    return digest ? exportLayout(this.content, digest) : undefined;
  }

  /** Records an image from any source under `key`, counting it against the namespace's storage quota. */
  async add(
    namespace: string,
    key: string,
    source: ImageTable['source'],
    from: ImageSource,
    o: { onEvent?: (e: PullEvent) => void; signal?: AbortSignal } = {},
  ): Promise<Image> {
    const resolved = await from.resolve();
    const bytes = resolved.manifest.layers.reduce((n, l) => n + l.size, 0);
    // Checked before the pull, not held through it: a pull takes minutes, and the quota lock is the user's.
    await this.quotas.admitStorage(namespace, bytes, `image ${key}`, async () => {});
    const image = await this.content.pull({ name: from.name, resolve: async () => resolved, blob: (d, s) => from.blob(d, s) }, { name: key, ...o });
    const now = new Date().toISOString();
    await this.db
      .insertInto('images')
      .values({ namespace, name: key, digest: image.digest, source, public: 0, size_bytes: image.sizeBytes, created_at: now, updated_at: now })
      .onConflict((oc) => oc.columns(['namespace', 'name']).doUpdateSet({ digest: image.digest, source, size_bytes: image.sizeBytes, updated_at: now }))
      .execute();
    return image;
  }

  /** Stores a registry login for the namespace, once the registry accepted it (a docker config's are taken as they are). */
  async login(namespace: string, registry: string, username: string, password: string, o: { check: boolean }): Promise<{ registry: string; username: string }> {
    const host = normalize(registry);
    if (o.check) await this.registry(namespace).login(host, { username, password });
    return this.logins.login(namespace, host, username, password);
  }

  /** Forgets a name; the content goes once nothing (another name, a sandbox, a template, a backup) uses it. */
  async delete(namespace: string, name: string): Promise<void> {
    const n = imageName(name);
    const row = await this.row(namespace, n, { own: true });
    const users = await this.users(row.digest, row.name);
    if (users.length)
      throw conflict(
        `image ${row.name} is in use by ${users.slice(0, 5).join(', ')}${users.length > 5 ? ` and ${users.length - 5} more` : ''}: delete them first`,
      );
    await this.db.deleteFrom('images').where('namespace', '=', namespace).where('name', '=', row.name).execute();
    await this.collect();
  }

  /** Admins make an image visible to every namespace (or private again). */
  async publish(namespace: string, name: string, isPublic: boolean): Promise<ImageInfo> {
    const row = await this.row(namespace, imageName(name), { own: true });
    await this.db
      .updateTable('images')
      .set({ public: isPublic ? 1 : 0 })
      .where('namespace', '=', namespace)
      .where('name', '=', row.name)
      .execute();
    return this.get(namespace, name);
  }

  /**
   * Garbage collection: images no name, sandbox, template, pool or backup
   * uses are removed with the layers only they had. Under disk pressure (as
   * the kubelet's image GC) unused pulled images go too, least recently
   * updated first: they can be pulled again.
   */
  async collect(): Promise<{ images: number; layers: number; bytes: number }> {
    const keep = await this.referenced();
    let images = 0;
    for (const image of await this.content.list()) {
      if (keep.has(image.digest)) continue;
      await this.content.remove(image.digest);
      images++;
    }
    const high = this.opts.gcHighPercent ?? 85;
    const low = this.opts.gcLowPercent ?? 80;
    if ((await this.usedPercent()) > high) {
      const inUse = await this.inUse();
      const pulled = await this.db.selectFrom('images').selectAll().where('source', '=', 'pull').orderBy('updated_at').execute();
      for (const r of pulled) {
        if ((await this.usedPercent()) <= low) break;
        if (inUse.has(r.digest)) continue;
        this.log.info({ image: r.name, namespace: r.namespace, digest: r.digest }, 'image GC: removing an unused pulled image (disk pressure)');
        await this.db.deleteFrom('images').where('namespace', '=', r.namespace).where('name', '=', r.name).execute();
        if (!(await this.referenced()).has(r.digest)) await this.content.remove(r.digest);
        images++;
        await this.content.pruneLayers({ minAgeMs: 0 });
      }
    }
    const pruned = await this.content.pruneLayers();
    return { images, ...pruned };
  }

  /** The digests that must stay: named ones, the catalog's, and those in use. */
  private async referenced(): Promise<Set<string>> {
    const keep = await this.inUse();
    for (const r of await this.db.selectFrom('images').select('digest').execute()) keep.add(r.digest);
    for (const name of Object.keys(IMAGE_CATALOG)) {
      const d = await this.content.catalogDigest(name);
      if (d) keep.add(d);
    }
    return keep;
  }

  /** Digests sandboxes run (or will restart) from, and those backups were taken of. */
  private async inUse(): Promise<Set<string>> {
    const keep = new Set<string>();
    for (const s of await this.store.listSandboxes()) if (s.sandbox.status.image?.digest) keep.add(s.sandbox.status.image.digest);
    for (const b of await this.db.selectFrom('backups').select('image_digest').where('image_digest', 'is not', null).execute()) keep.add(b.image_digest!);
    return keep;
  }

  /** Who uses an image: sandboxes by digest, templates and pools by name, backups by digest. */
  private async users(digest: string, key: string): Promise<string[]> {
    const out: string[] = [];
    for (const s of await this.store.listSandboxes())
      if (s.sandbox.status.image?.digest === digest) out.push(`sandbox ${s.sandbox.metadata.namespace}/${s.sandbox.metadata.name}`);
    for (const t of await this.store.listObjects('SandboxTemplate')) {
      const spec = t.spec as { podTemplate?: { spec?: { containers?: { image?: string }[] } } };
      const image = spec.podTemplate?.spec?.containers?.[0]?.image;
      if (image && imageName(image).key === key) out.push(`template ${t.metadata.namespace}/${t.metadata.name}`);
    }
    const backups = await this.db.selectFrom('backups').select(['namespace', 'sandbox', 'id']).where('image_digest', '=', digest).execute();
    for (const b of backups) out.push(`backup ${b.namespace}/${b.sandbox ?? b.id}`);
    return out;
  }

  private async usedPercent(): Promise<number> {
    const s = await statfs(this.content.dir).catch(() => undefined);
    return s ? 100 * (1 - s.bavail / s.blocks) : 0;
  }

  private async catalog(name: string, progress?: (line: string) => void): Promise<Image> {
    return this.content.ensureCatalog(name, progress ?? ((line) => this.log.info({ image: name }, line)));
  }

  /** The namespace's own image by this name, else a published one. */
  private async find(namespace: string, name: ImageName): Promise<ImageTable | undefined> {
    const own = await this.db.selectFrom('images').selectAll().where('namespace', '=', namespace).where('name', '=', name.key).executeTakeFirst();
    if (own) return own;
    return this.db.selectFrom('images').selectAll().where('name', '=', name.key).where('public', '=', 1).orderBy('created_at').executeTakeFirst();
  }

  private async row(namespace: string, name: ImageName, o: { own?: boolean } = {}): Promise<ImageTable> {
    const r = o.own
      ? await this.db.selectFrom('images').selectAll().where('namespace', '=', namespace).where('name', '=', name.key).executeTakeFirst()
      : await this.find(namespace, name);
    if (r) return r;
    if (!name.ref && !o.own) {
      const d = await this.content.catalogDigest(name.key);
      if (d) {
        const image = await this.content.byDigest(d);
        return {
          namespace: CATALOG_NS,
          name: name.key,
          digest: d,
          source: 'catalog',
          public: 1,
          size_bytes: image.sizeBytes,
          created_at: image.createdAt,
          updated_at: image.createdAt,
        };
      }
    }
    if (o.own && (await this.find(namespace, name)))
      throw forbidden(`image ${name.key} is published by another namespace: only its own namespace can change it`);
    throw await this.notFound(namespace, name, '');
  }

  /** A 404 naming what the namespace does have (`details.known`), `why` appended after the list. */
  private async notFound(namespace: string, name: ImageName, why: string): Promise<MoatError> {
    const known = [...new Set([...(await this.list([namespace])).map((i) => i.name), ...Object.keys(IMAGE_CATALOG)])].sort();
    return new MoatError(404, 'ImageNotFound', `image "${name.key}" not found in namespace "${namespace}"; known images: ${known.join(', ')}${why}`, { known });
  }

  private async info(r: ImageTable): Promise<ImageInfo> {
    const image = await this.content.byDigest(r.digest).catch(() => undefined);
    const c = image?.config ?? {};
    return {
      namespace: r.namespace,
      name: r.name,
      digest: r.digest,
      source: r.source,
      public: r.public === 1,
      sizeBytes: r.size_bytes,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
      config: {
        ...(c.Entrypoint ? { Entrypoint: c.Entrypoint } : {}),
        ...(c.Cmd ? { Cmd: c.Cmd } : {}),
        ...(c.Env ? { Env: c.Env } : {}),
        ...(c.WorkingDir ? { WorkingDir: c.WorkingDir } : {}),
        ...(c.User ? { User: c.User } : {}),
        ...(c.ExposedPorts ? { ExposedPorts: c.ExposedPorts } : {}),
        ...(c.Labels ? { Labels: c.Labels } : {}),
      },
      layers: image?.layers.length ?? 0,
    };
  }

  /** A registry client with the namespace's logins (each use of a password is an audit event). */
  private registry(namespace: string): RegistryClient {
    return new RegistryClient({
      credentials: (registry) => this.logins.credentials(namespace, registry),
      ...(this.opts.certsDir ? { certsDir: this.opts.certsDir } : {}),
      ...(this.opts.insecureRegistries ? { insecure: this.opts.insecureRegistries } : {}),
    });
  }
}

/** `python`, `my-agent:v1`: a name the user may have meant as one of their own. */
const isLocalLooking = (s: string) => !s.includes('/');

export function describeEvent(e: PullEvent): string {
  switch (e.type) {
    case 'resolved':
      return `resolved ${e.digest}: ${e.layers} layers, ${(e.bytes / 2 ** 20).toFixed(1)} MiB`;
    case 'layer':
      return e.status === 'downloading'
        ? `  ${e.digest.slice(7, 19)}: ${((e.current ?? 0) / 2 ** 20).toFixed(1)}/${((e.total ?? 0) / 2 ** 20).toFixed(1)} MiB`
        : `  ${e.digest.slice(7, 19)}: ${e.status === 'exists' ? 'already exists' : 'done'}`;
    case 'stored':
      return `stored ${e.digest}`;
  }
}
