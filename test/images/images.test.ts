import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Moat } from '@moat/sdk';
import { run } from '@moat/runtime';
import { NS, createReady, sh, sharedImagesDir, startTestServer, testRuntimes, type TestServer } from '../helpers/server.js';
import { corruptBlob, makeImageLayout, registryArgs, startRegistry, truncateBlob, type TestRegistry } from '../helpers/registry.js';
import { busyboxImage, pushLayout } from '../helpers/test-images.js';
import { runProcess } from '../helpers/run-process.js';
import { EXT, apiJson, claimBody, create, poolBody, poolMembers, poolReady } from '../helpers/extensions.js';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/main.js');

/**
 * Bring your own image, end to end: a real registry on loopback (Debian's
 * distribution), pushed to with skopeo; Moat pulls, records the digest, and
 * runs the image on every runtime class with its ENTRYPOINT/CMD, ENV,
 * WORKDIR and USER applied.
 */
describe('images from a registry', () => {
  let server: TestServer;
  let registry: TestRegistry;
  let moat: Moat;
  let work: string;
  let app: { ref: string; digest: string };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'moat-images-'));
    registry = await startRegistry();
    server = await startTestServer({ registries: { certsDir: registry.certsDir } });
    moat = new Moat({ url: server.url, apiKey: server.adminKey });
    await moat.images.login(registry.host, registry.username, registry.password);
    const layout = join(work, 'app');
    app = { ref: `${registry.host}/team/app:v1`, digest: await pushLayout(await busyboxImage(layout, 'v1'), registry, 'team/app:v1') };
  });
  after(async () => {
    await server?.close();
    await registry?.close();
    await rm(work, { recursive: true, force: true });
  });

  test('moat images pull records the digest and streams layer progress', async () => {
    const seen: string[] = [];
    const image = await moat.images.pull(app.ref, { onProgress: (p) => seen.push(p.type) });
    assert.equal(image.digest, app.digest);
    assert.equal(image.source, 'pull');
    assert.equal(image.layers, 2);
    assert.deepEqual(image.config.Cmd, ['/bin/sh', '-c', 'echo main ran as $(id -u) in $(pwd) > /tmp/main.txt; exec sleep 1000000']);
    assert.ok(seen.includes('resolved') && seen.includes('layer'), `progress: ${seen.join(',')}`);
    const listed = await moat.images.listNamespace();
    assert.ok(listed.some((i) => i.name === app.ref && i.digest === app.digest));
  });

  for (const { runtime, skip } of testRuntimes()) {
    test(`runs on ${runtime} with the image's CMD, ENV, WORKDIR and USER`, { skip }, async () => {
      const name = `byo-${runtime}`;
      const s = await createReady(server, name, { image: app.ref, runtime });
      const pinned = (s.status as { image?: { name: string; digest: string; workingDir?: string } }).image;
      assert.deepEqual([pinned?.name, pinned?.digest, pinned?.workingDir], [app.ref, app.digest, '/app']);
      const r = await sh(
        server,
        name,
        'cat /app/hello.txt; echo "$GREETING"; pwd; id -u; for i in $(seq 50); do [ -f /tmp/main.txt ] && break; sleep 0.1; done; cat /tmp/main.txt; [ -e /app/removed.txt ] || echo whiteout-applied',
      );
      assert.equal(r.exit?.exitCode, 0, r.stderr);
      assert.equal(r.stdout, 'hello from layer 2\nhi\n/app\n1000\nmain ran as 1000 in /app\nwhiteout-applied\n');
      await server.api(`${NS}/${name}`, { method: 'DELETE' });
    });
  }

  for (const { runtime, skip } of testRuntimes()) {
    test(`a warm pool of the image on ${runtime} serves claims`, { skip }, async () => {
      const tpl = `byo-tpl-${runtime}`;
      await create(server, 'sandboxtemplates', {
        apiVersion: 'extensions.agents.x-k8s.io/v1alpha1',
        kind: 'SandboxTemplate',
        metadata: { name: tpl },
        spec: { podTemplate: { spec: { runtimeClassName: runtime, containers: [{ name: 'main', image: app.ref }] } } },
      });
      await create(server, 'sandboxwarmpools', poolBody(`${tpl}-pool`, tpl, 1));
      await poolReady(server, `${tpl}-pool`, 1, 180_000);
      const [member] = await poolMembers(server, `${tpl}-pool`);
      await create(server, 'sandboxclaims', claimBody(`${tpl}-claim`, tpl));
      const claim = await apiJson(server, `${EXT}/sandboxclaims/${tpl}-claim/wait?timeoutSeconds=60`, {}, 200);
      assert.equal(claim.status.warmPool, `${tpl}-pool`);
      const s = await apiJson(server, `${NS}/${claim.status.sandbox.name}`);
      assert.equal(s.metadata.uid, member!.metadata.uid, 'the claim took the warm member');
      assert.equal(s.status.image.digest, app.digest);
      const r = await sh(server, claim.status.sandbox.name, 'cat /app/hello.txt; id -u');
      assert.equal(r.stdout, 'hello from layer 2\n1000\n', `${r.stderr} ${JSON.stringify(r.error ?? r.exit)}`);
      await apiJson(server, `${EXT}/sandboxclaims/${tpl}-claim?wait=true`, { method: 'DELETE' }, 200);
      await apiJson(server, `${EXT}/sandboxwarmpools/${tpl}-pool?wait=true`, { method: 'DELETE' }, 200);
      await apiJson(server, `${EXT}/sandboxtemplates/${tpl}`, { method: 'DELETE' }, 200);
    });
  }

  test('command and args replace ENTRYPOINT and CMD as in Kubernetes', async () => {
    const s = await createReady(server, 'byo-override', { image: app.ref, command: ['/bin/sh', '-c', 'echo overridden > /tmp/main.txt; exec sleep 1000000'] });
    assert.equal((s.status as { image: { digest: string } }).image.digest, app.digest);
    const r = await sh(server, 'byo-override', 'for i in $(seq 50); do [ -f /tmp/main.txt ] && break; sleep 0.1; done; cat /tmp/main.txt');
    assert.equal(r.stdout, 'overridden\n');
    // The namespace's registry login is the server's alone.
    const seen = await sh(server, 'byo-override', 'env; tr "\\0" "\\n" < /proc/1/environ; cat /etc/*.json 2>/dev/null; true');
    assert.ok(seen.stdout.includes('PATH='), seen.stderr);
    assert.ok(!seen.stdout.includes(registry.password), 'the registry password is not in the sandbox');
    await server.api(`${NS}/byo-override`, { method: 'DELETE' });
  });

  test('a tag that moves changes neither a running sandbox nor its restarts', async () => {
    await createReady(server, 'pinned', { image: app.ref });
    const v2 = await pushLayout(await busyboxImage(join(work, 'app-v2'), 'v2'), registry, 'team/app:v1');
    assert.notEqual(v2, app.digest);
    // IfNotPresent (a tag that is not :latest): the name keeps the digest it had until pulled again.
    await moat.images.pull(app.ref);
    assert.equal((await moat.images.get(app.ref)).digest, v2);
    // Hibernate and wake: the sandbox starts again from its pinned image.
    const hibernate = await server.api(`${NS}/pinned/hibernate`, { method: 'POST' });
    assert.ok(hibernate.ok, await hibernate.text());
    const wake = await server.api(`${NS}/pinned/wake`, { method: 'POST' });
    assert.ok(wake.ok, await wake.text());
    await server.api(`${NS}/pinned/wait?timeoutSeconds=60`);
    const after = (await (await server.api(`${NS}/pinned`)).json()) as { status: { image: { digest: string } } };
    assert.equal(after.status.image.digest, app.digest);
    assert.equal((await sh(server, 'pinned', 'cat /app/hello.txt')).stdout, 'hello from layer 2\n');
    const fresh = await createReady(server, 'fresh', { image: app.ref });
    assert.equal((fresh.status as { image: { digest: string } }).image.digest, v2);
    assert.equal((await sh(server, 'fresh', 'cat /app/hello.txt')).stdout, 'hello from v2\n');
    // The old digest is kept while `pinned` uses it; the name cannot be deleted while sandboxes use it.
    await assert.rejects(moat.images.delete(app.ref), (e: Error & { code?: number }) => e.code === 409 && /in use by sandbox default\/fresh/.test(e.message));
    for (const n of ['pinned', 'fresh']) await server.api(`${NS}/${n}`, { method: 'DELETE' });
    app.digest = v2;
  });

  test('a pinned digest pulls exactly that manifest', async () => {
    const ref = `${registry.host}/team/app@${app.digest}`;
    const image = await moat.images.pull(ref);
    assert.equal(image.digest, app.digest);
  });

  test('a multi-platform index pulls its linux/amd64 image', async () => {
    // The app's layout gains an arm64 twin (same layers, another config) and an index over both.
    const dir = join(work, 'app');
    const blob = (d: string) => join(dir, 'blobs', 'sha256', d.slice(7));
    const put = async (bytes: string) => {
      const d = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      await writeFile(blob(d), bytes);
      return { digest: d, size: Buffer.byteLength(bytes) };
    };
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string; size: number }[] };
    const amd64 = index.manifests[0]!;
    const manifest = JSON.parse(await readFile(blob(amd64.digest), 'utf8')) as { config: { digest: string; size: number } };
    const config = JSON.parse(await readFile(blob(manifest.config.digest), 'utf8')) as { architecture: string };
    const armConfig = await put(JSON.stringify({ ...config, architecture: 'arm64' }));
    const arm = await put(JSON.stringify({ ...manifest, config: { ...manifest.config, ...armConfig } }));
    const list = await put(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...arm, platform: { os: 'linux', architecture: 'arm64' } },
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd64.digest, size: amd64.size, platform: { os: 'linux', architecture: 'amd64' } },
        ],
      }),
    );
    const multi = join(work, 'multi');
    await run('cp', ['-a', dir, multi]);
    await writeFile(
      join(multi, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...list, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
      }),
    );
    await run('skopeo', [
      'copy',
      '--quiet',
      '--insecure-policy',
      '--all',
      '--preserve-digests',
      ...registryArgs(registry, 'dest'),
      `oci:${multi}:latest`,
      `docker://${registry.host}/team/multi:v1`,
    ]);
    const image = await moat.images.pull(`${registry.host}/team/multi:v1`);
    assert.equal(image.digest, amd64.digest, 'the amd64 manifest, not the index or the arm64 one');
  });

  test('bad references and registries get clear errors', async () => {
    const cases: [string, number, RegExp][] = [
      ['UPPER/case:tag', 400, /invalid|lowercase/i],
      [`${registry.host}/team/app:missing`, 404, /not found/],
      [`127.0.0.1:1/nothing/here:v1`, 502, /cannot reach registry 127\.0\.0\.1:1/],
    ];
    for (const [ref, code, message] of cases) {
      await assert.rejects(moat.images.pull(ref), (e: Error & { code?: number }) => {
        assert.equal(e.code, code, `${ref}: ${e.message}`);
        assert.match(e.message, message);
        return true;
      });
    }
    const res = await server.api(NS, {
      method: 'POST',
      json: { metadata: { name: 'no-such' }, spec: { podTemplate: { spec: { containers: [{ name: 's', image: 'no-such-image' }] } } } },
    });
    assert.equal(res.status, 404);
    assert.match(((await res.json()) as { message: string }).message, /image "no-such-image:latest" not found in namespace "default"; known images: .*base/);
  });

  test('a registry that lies about a blob is refused and leaves nothing behind', async () => {
    const layout = await makeImageLayout(join(work, 'liar'), { layers: [{ 'liar.txt': 'the truth' }] });
    const digest = await pushLayout(layout, registry, 'team/liar:v1');
    const manifest = JSON.parse(await readFile(join(layout, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    await corruptBlob(registry, manifest.layers[0]!.digest);
    const before = await layerDirs();
    await assert.rejects(
      moat.images.pull(`${registry.host}/team/liar:v1`),
      (e: Error & { code?: number; reason?: string }) => e.code === 502 && e.reason === 'DigestMismatch',
    );
    assert.deepEqual(await layerDirs(), before, 'no layer was stored');
    await assert.rejects(moat.images.get(`${registry.host}/team/liar:v1`), (e: Error & { code?: number }) => e.code === 404);
  });

  test('a download that breaks off is refused and leaves nothing behind', async () => {
    const layout = await makeImageLayout(join(work, 'short'), { layers: [{ 'big.bin': randomBytes(256 * 1024).toString('base64') }] });
    const digest = await pushLayout(layout, registry, 'team/short:v1');
    const manifest = JSON.parse(await readFile(join(layout, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    await truncateBlob(registry, manifest.layers[0]!.digest);
    const before = await layerDirs();
    await assert.rejects(moat.images.pull(`${registry.host}/team/short:v1`), (e: Error & { code?: number; reason?: string }) => {
      assert.equal(e.code, 502, e.message);
      assert.equal(e.reason, 'TruncatedBlob', e.message);
      return true;
    });
    assert.deepEqual(await layerDirs(), before, 'no layer was stored');
  });

  test('a wrong registry password is refused and not kept', async () => {
    await assert.rejects(moat.images.login(registry.host, registry.username, 'not-the-password'), (e: Error & { code?: number; reason?: string }) => {
      assert.equal(e.code, 403, e.message);
      assert.match(e.message, /refused the login/);
      return true;
    });
    const logins = await moat.images.registries();
    assert.equal(logins.filter((l) => l.registry === registry.host).length, 1, 'the good login stays');
  });

  test('a layer that writes outside its root is refused', async () => {
    const layout = await makeImageLayout(join(work, 'escape'), { layers: [{ 'ok.txt': 'fine' }, { '../../escaped.txt': 'evil' }] });
    await pushLayout(layout, registry, 'team/escape:v1');
    await assert.rejects(
      moat.images.pull(`${registry.host}/team/escape:v1`),
      (e: Error & { code?: number; reason?: string }) => e.code === 422 && e.reason === 'UnsafeLayer',
    );
  });

  test("another user's namespace sees an image only once an admin publishes it", async () => {
    const bob = await moat.users.create({ name: 'img-bob', role: 'member' });
    const asBob = new Moat({ url: server.url, apiKey: bob.key.key, namespace: 'img-bob' });
    const visible = async () => (await asBob.images.listNamespace()).some((i) => i.name === app.ref);
    assert.equal(await visible(), false, 'private to its namespace');
    await assert.rejects(asBob.images.get(app.ref), (e: Error & { code?: number }) => e.code === 404);
    await assert.rejects(
      new Moat({ url: server.url, apiKey: bob.key.key, namespace: 'default' }).images.listNamespace(),
      (e: Error & { code?: number }) => e.code === 404,
      "another user's namespace looks missing",
    );
    assert.equal((await moat.images.publish(app.ref)).public, true);
    assert.equal(await visible(), true, 'published to all');
    await assert.rejects(asBob.images.publish(app.ref, false), (e: Error & { code?: number }) => e.code === 403, 'only admins publish');
    await moat.images.publish(app.ref, false);
    assert.equal(await visible(), false);
  });

  test("image storage counts against the owner's storage quota", async () => {
    const quoted = await moat.users.create({ name: 'img-q', role: 'member', quota: { storage: '1Ki' } });
    const asQ = new Moat({ url: server.url, apiKey: quoted.key.key, namespace: 'img-q' });
    await asQ.images.login(registry.host, registry.username, registry.password);
    await assert.rejects(asQ.images.pull(app.ref), (e: Error & { code?: number; reason?: string }) => {
      assert.equal(e.reason, 'QuotaExceeded', e.message);
      assert.match(e.message, /user "img-q": storage limit 1Ki/);
      return true;
    });
    assert.equal(
      (await asQ.images.listNamespace()).some((i) => i.name === app.ref),
      false,
      'nothing recorded',
    );
  });

  test('the CLI: moat registry login/list/logout, moat images pull and import', async () => {
    const user = await moat.users.create({ name: 'img-cli', role: 'member' });
    const cli = (args: string[], input?: string) =>
      runProcess(process.execPath, [CLI, ...args], {
        env: {
          ...(process.env as Record<string, string>),
          MOAT_URL: server.url,
          MOAT_API_KEY: user.key.key,
          MOAT_NAMESPACE: 'img-cli',
          MOAT_CONFIG: join(work, 'cli.json'),
        },
        ...(input === undefined ? {} : { input }),
      });
    const wrong = await cli(['registry', 'login', registry.host, '-u', registry.username, '--password-stdin'], 'wrong\n');
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /refused the login/);
    const login = await cli(['registry', 'login', registry.host, '-u', registry.username, '--password-stdin'], `${registry.password}\n`);
    assert.equal(login.code, 0, login.stderr);
    assert.equal(login.stdout, `logged in to ${registry.host} as ${registry.username}\n`);
    assert.match((await cli(['registry', 'list'])).stdout, new RegExp(`^${registry.host}\\s+${registry.username}\\s*$`, 'm'));

    const pulled = await cli(['images', 'pull', app.ref]);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(pulled.stdout, `${app.ref} ${app.digest}\n`);
    assert.match(pulled.stderr, new RegExp(`^${app.digest}: 2 layers, `, 'm'), 'progress on stderr');
    assert.match(pulled.stderr, /^[0-9a-f]{12}: (already exists|pull complete)$/m);

    const archive = join(work, 'cli-app.tar');
    await run('skopeo', ['copy', '--quiet', '--insecure-policy', `oci:${join(work, 'app')}:latest`, `docker-archive:${archive}:cli/app:v1`]);
    const imported = await cli(['images', 'import', archive, '-t', 'cli-imported:v1']);
    assert.equal(imported.code, 0, imported.stderr);
    assert.match(imported.stdout, /^cli-imported:v1 sha256:[0-9a-f]{64}\n$/);
    const missing = await cli(['images', 'import', join(work, 'no-such.tar')]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /no-such\.tar is not a file/);

    const logout = await cli(['registry', 'logout', registry.host]);
    assert.equal(logout.code, 0, logout.stderr);
    const again = await cli(['registry', 'logout', registry.host]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, new RegExp(`no login for registry ${registry.host}`));
    const refused = await cli(['images', 'pull', app.ref]);
    assert.notEqual(refused.code, 0, 'a private repository without a login');
    assert.match(refused.stderr, /unauthori[sz]ed|authentication|login/i);

    // A docker config.json's "auths" log in the same way.
    const config = join(work, 'docker-config.json');
    const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
    await writeFile(config, JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const imported2 = await cli(['registry', 'login', '--config', config]);
    assert.equal(imported2.code, 0, imported2.stderr);
    assert.equal(imported2.stdout, `logged in to ${registry.host} as ${registry.username}\n`);
    assert.equal((await cli(['images', 'pull', '-q', app.ref])).stdout, `${app.digest}\n`);
    assert.equal((await cli(['images', 'delete', 'cli-imported:v1'])).code, 0);
  });

  async function layerDirs() {
    return (await readdir(join(sharedImagesDir(), 'layers')).catch(() => [] as string[])).sort();
  }

  test('import a docker save archive', async () => {
    const archive = join(work, 'app.tar');
    await run('skopeo', ['copy', '--insecure-policy', `oci:${join(work, 'app')}:latest`, `docker-archive:${archive}:imported/app:v1`]);
    const [image] = await moat.images.importArchive(new Uint8Array(await readFile(archive)));
    assert.equal(image!.name, 'imported/app:v1');
    assert.equal(image!.source, 'import');
    await createReady(server, 'imported', { image: 'imported/app:v1' });
    assert.equal((await sh(server, 'imported', 'cat /app/hello.txt')).stdout, 'hello from layer 2\n');
    await server.api(`${NS}/imported`, { method: 'DELETE' });
    for (let i = 0; i < 100 && (await server.api(`${NS}/imported`)).status !== 404; i++) await new Promise((r) => setTimeout(r, 100));
    // Unused now: deleting the name collects the image (its layers are the registry image's, which stays).
    await moat.images.delete('imported/app:v1');
    await assert.rejects(moat.images.get('imported/app:v1'), (e: Error & { code?: number }) => e.code === 404);
    const manifests = await readdir(join(sharedImagesDir(), 'manifests'));
    assert.ok(!manifests.includes(`${image!.digest.slice(7)}.json`), 'the image is gone from the store');
    assert.ok(manifests.includes(`${app.digest.slice(7)}.json`), 'the image a name still has stays');
  });
});
