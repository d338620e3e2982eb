import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { MEDIA, run, type ImageConfig, type Manifest, type RunConfig } from '@moat/runtime';

/** A real registry (Debian's distribution) on loopback, for pulls that cross a real HTTP(S) boundary. */
export interface TestRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  url: string;
  /** Empty when started without auth. */
  username: string;
  password: string;
  /** Docker's certs.d layout: `<certsDir>/<host>/ca.crt`. */
  certsDir: string;
  storageDir: string;
  close(): Promise<void>;
}

export async function startRegistry(o: { auth?: boolean; tls?: boolean } = {}): Promise<TestRegistry> {
  const auth = o.auth ?? true;
  const tls = o.tls ?? true;
  const root = await mkdtemp(join(tmpdir(), 'moat-registry-'));
  try {
    const host = `127.0.0.1:${await freePort()}`;
    const storageDir = join(root, 'storage');
    const certsDir = join(root, 'certs');
    await mkdir(storageDir);
    await mkdir(join(certsDir, host), { recursive: true });
    const config = {
      version: 0.1,
      log: { level: 'info', accesslog: { disabled: !process.env.MOAT_TEST_LOG } },
      // The descriptor cache keeps a blob's pushed size after its file changes: truncateBlob relies on it.
      storage: { filesystem: { rootdirectory: storageDir }, cache: { blobdescriptor: 'inmemory' }, delete: { enabled: true } },
      http: { addr: host, secret: randomBytes(16).toString('hex') } as Record<string, unknown>,
      auth: undefined as unknown,
    };
    let ca: Buffer | undefined;
    if (tls) {
      const t = await makeCerts(join(root, 'tls'));
      ca = await readFile(t.ca);
      await copyFile(t.ca, join(certsDir, host, 'ca.crt'));
      config.http.tls = { certificate: t.cert, key: t.key };
    }
    const username = auth ? 'moat' : '';
    const password = auth ? randomBytes(12).toString('hex') : '';
    if (auth) {
      const htpasswd = join(root, 'htpasswd');
      await writeFile(htpasswd, (await run('htpasswd', ['-nbB', username, password])).stdout);
      config.auth = { htpasswd: { realm: 'moat-test', path: htpasswd } };
    }
    const configPath = join(root, 'config.yml');
    await writeFile(configPath, JSON.stringify(config)); // YAML is a superset of JSON

    const child = spawn('docker-registry', ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let logTail = '';
    for (const s of [child.stdout, child.stderr]) {
      s.on('data', (d: Buffer) => {
        logTail = (logTail + d.toString()).slice(-4000);
        if (process.env.MOAT_TEST_LOG) process.stderr.write(`[registry] ${d.toString()}`);
      });
    }
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const spawned = new Promise<void>((resolve, reject) => child.on('spawn', resolve).on('error', reject));
    const killOnExit = () => child.kill('SIGKILL');
    process.on('exit', killOnExit);
    const url = `${tls ? 'https' : 'http'}://${host}`;
    const close = async () => {
      process.off('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }
      await rm(root, { recursive: true, force: true });
    };
    try {
      await spawned;
      await waitReady(url, ca, auth ? 401 : 200, exited);
    } catch (err) {
      await close();
      throw new Error(`docker-registry did not start on ${host}: ${(err as Error).message}\n${logTail.trim()}`);
    }
    return { host, url, username, password, certsDir, storageDir, close };
  } catch (err) {
    await rm(root, { recursive: true, force: true });
    throw err;
  }
}

/** Serve different bytes of the same length under `digest`, as a registry that lies about a blob would. */
export async function corruptBlob(r: TestRegistry, digest: string): Promise<void> {
  const path = blobPath(r, digest);
  const data = await readFile(path);
  for (let i = 0; i < data.length; i++) data[i] ^= 0xff;
  await writeFile(path, data);
}

/**
 * Keep only the first half of the stored blob. Distribution answers with the
 * size it cached when the blob was pushed, so the response announces the full
 * Content-Length and the connection closes after half of it: a short, aborted
 * body rather than a well-formed smaller one.
 */
export async function truncateBlob(r: TestRegistry, digest: string): Promise<void> {
  const path = blobPath(r, digest);
  const size = (await readFile(path)).length;
  await truncate(path, Math.floor(size / 2));
}

function blobPath(r: TestRegistry, digest: string): string {
  const hex = /^sha256:([0-9a-f]{64})$/.exec(digest)?.[1];
  if (!hex) throw new Error(`not a sha256 digest: ${digest}`);
  return join(r.storageDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

export interface EntrySpec {
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char-device' | 'block-device' | 'fifo';
  content?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
}
/** Tar entries by raw name, written verbatim (so `../x` and `/abs` reach the unpacker as they are). */
export type LayerSpec = Record<string, string | EntrySpec>;

const TAR_TYPES = {
  file: 'file',
  dir: 'directory',
  symlink: 'symlink',
  hardlink: 'link',
  'char-device': 'character-device',
  'block-device': 'block-device',
  fifo: 'fifo',
} as const;

/** Write an OCI image layout tagged `latest` at `dir`; returns `dir`. Entries get a fixed mtime so digests are reproducible. */
export async function makeImageLayout(dir: string, o: { layers: LayerSpec[]; config?: Partial<RunConfig>; compress?: boolean }): Promise<string> {
  const compress = o.compress ?? true;
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const put = async (bytes: Buffer, mediaType: string) => {
    const digest = sha256(bytes);
    await writeFile(join(dir, 'blobs', 'sha256', digest.slice(7)), bytes);
    return { mediaType, digest, size: bytes.length };
  };
  const layers = [];
  const diffIds = [];
  for (const spec of o.layers) {
    const raw = await packLayer(spec);
    diffIds.push(sha256(raw));
    layers.push(await put(compress ? gzipSync(raw) : raw, compress ? MEDIA.ociLayerGzip : MEDIA.ociLayer));
  }
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  const config: ImageConfig = { architecture: arch, os: 'linux', config: o.config ?? {}, rootfs: { type: 'layers', diff_ids: diffIds } };
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: await put(Buffer.from(JSON.stringify(config)), MEDIA.ociConfig),
    layers,
  };
  const desc = await put(Buffer.from(JSON.stringify(manifest)), MEDIA.ociManifest);
  const index = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [{ ...desc, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }] };
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return dir;
}

async function packLayer(spec: LayerSpec): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  // Drain while adding entries, or the pack stream stalls on backpressure.
  const drained = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  for (const [name, value] of Object.entries(spec)) {
    const e: EntrySpec = typeof value === 'string' ? { content: value } : value;
    const type = TAR_TYPES[e.type ?? 'file'];
    const body = type === 'file' ? Buffer.from(e.content ?? '') : Buffer.alloc(0);
    const defaultMode = type === 'directory' ? 0o755 : type === 'symlink' ? 0o777 : 0o644;
    // Devices are /dev/null's numbers: 0:0 would read as an overlay whiteout.
    const header: Partial<tar.Header> & { name: string } = {
      name,
      type,
      mode: e.mode ?? defaultMode,
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date(0),
      size: body.length,
    };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    if (type === 'character-device' || type === 'block-device') Object.assign(header, { devmajor: 1, devminor: 3 });
    await new Promise<void>((resolve, reject) => pack.entry(header, body, (err) => (err ? reject(err) : resolve())));
  }
  pack.finalize();
  await drained;
  return Buffer.concat(chunks);
}

/** Push an OCI layout's `latest` to `r` as `repoTag` (`team/app:v1`) with skopeo; returns the pushed manifest's digest. */
export async function pushLayout(layoutDir: string, r: TestRegistry, repoTag: string): Promise<string> {
  const work = await mkdtemp(join(tmpdir(), 'moat-push-'));
  try {
    const digestFile = join(work, 'digest');
    const args = ['copy', '--quiet', '--insecure-policy', '--preserve-digests', '--digestfile', digestFile, ...registryArgs(r, 'dest')];
    await run('skopeo', [...args, `oci:${layoutDir}:latest`, `docker://${r.host}/${repoTag}`]);
    return (await readFile(digestFile, 'utf8')).trim();
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** skopeo's flags for reaching `r`: for the `src` or `dest` of a copy, or (no side) for inspect. */
export function registryArgs(r: TestRegistry, side?: 'src' | 'dest'): string[] {
  const flag = (name: string) => (side ? `--${side}-${name}` : `--${name}`);
  const args = r.url.startsWith('https:') ? [flag('cert-dir'), join(r.certsDir, r.host)] : [`${flag('tls-verify')}=false`];
  return r.username ? [...args, flag('creds'), `${r.username}:${r.password}`] : [...args, flag('no-creds')];
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function makeCerts(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  await mkdir(dir);
  const f = { ca: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
  const req = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'];
  await run('openssl', [...req, '-keyout', f.caKey, '-out', f.ca, '-subj', '/CN=moat-test-ca']);
  await run('openssl', [
    ...req,
    ...['-keyout', f.key, '-out', f.cert, '-subj', '/CN=127.0.0.1', '-CA', f.ca, '-CAkey', f.caKey],
    ...['-addext', 'subjectAltName=IP:127.0.0.1', '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth'],
  ]);
  return f;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

async function waitReady(url: string, ca: Buffer | undefined, want: number, exited: Promise<number | null>): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    if (gone) throw new Error('it exited');
    try {
      const status = await getStatus(`${url}/v2/`, ca);
      if (status === want) return;
      last = `GET /v2/ answered ${status}, not ${want}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out: ${last}`);
}

function getStatus(url: string, ca: Buffer | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = (url.startsWith('https:') ? https : http).get(url, { ca, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}
