import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { MEDIA, ingestLayer, packLayer, run } from '@moat/runtime';

/** A tar of `entries` (header + optional body), as a buffer. */
async function makeTar(entries: { h: Partial<tar.Header> & { name: string }; body?: string | Buffer }[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const drained = (async () => {
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const e of entries) {
    const body = typeof e.body === 'string' ? Buffer.from(e.body) : (e.body ?? Buffer.alloc(0));
    await new Promise<void>((res, rej) =>
      pack.entry({ mode: 0o644, ...e.h, ...(e.h.type === 'file' || !e.h.type ? { size: body.length } : {}) }, body, (err) => (err ? rej(err) : res())),
    );
  }
  pack.finalize();
  await drained;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('the layer unpacker', () => {
  const dirs: string[] = [];
  const fresh = async () => {
    const d = await mkdtemp(join(tmpdir(), 'moat-layer-'));
    dirs.push(d);
    return d;
  };
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  const ingest = async (blob: Buffer, o: Partial<Parameters<typeof ingestLayer>[1]> = {}) => {
    const dest = join(await fresh(), 'fs');
    const r = await ingestLayer(Readable.from([blob]), { mediaType: MEDIA.ociLayer, digest: sha(blob), size: blob.length, dest, ...o });
    return { dest, ...r };
  };
  const refused = (reason: string, pattern: RegExp) => (e: Error & { reason?: string }) => {
    assert.equal(e.reason, reason, e.message);
    assert.match(e.message, pattern);
    return true;
  };

  test('files, links, whiteouts and ids land as overlayfs wants them', async () => {
    const layer = await makeTar([
      { h: { name: './app/', type: 'directory', mode: 0o755 } },
      { h: { name: './app/hello.txt', uid: 1000, gid: 1000 }, body: 'hello' },
      { h: { name: '/abs/inside.txt' }, body: 'absolute names are under the root' },
      { h: { name: 'app/link', type: 'symlink', linkname: '/etc/passwd' } },
      { h: { name: 'app/hard', type: 'link', linkname: 'app/hello.txt' } },
      { h: { name: 'app/.wh.gone' } },
      { h: { name: 'lib/.wh..wh..opq' } },
      { h: { name: 'bin/su', mode: 0o4755 }, body: 'setuid is kept by default' },
    ]);
    const gz = gzipSync(layer);
    const { dest, opaque } = await ingest(gz, { mediaType: MEDIA.ociLayerGzip, diffId: sha(layer), mapId: (id) => id + 100000 });
    assert.equal(await readFile(join(dest, 'app/hello.txt'), 'utf8'), 'hello');
    assert.equal((await stat(join(dest, 'app/hello.txt'))).uid, 101000);
    assert.equal(await readFile(join(dest, 'abs/inside.txt'), 'utf8'), 'absolute names are under the root');
    assert.equal(await readlink(join(dest, 'app/link')), '/etc/passwd');
    assert.equal((await stat(join(dest, 'app/hard'))).ino, (await stat(join(dest, 'app/hello.txt'))).ino);
    const wh = await lstat(join(dest, 'app/gone'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'a whiteout is a 0/0 character device');
    assert.equal((await run('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(dest, 'lib')])).stdout, 'y');
    assert.deepEqual(opaque, ['lib']);
    assert.equal((await stat(join(dest, 'bin/su'))).mode & 0o7777, 0o4755);
  });

  test('a stored tree packs back to the same tar every time, whiteouts included', async () => {
    const layer = await makeTar([
      { h: { name: 'a/', type: 'directory', mode: 0o755, mtime: new Date(1e12) } },
      { h: { name: 'a/f', mtime: new Date(1e12) }, body: 'x' },
      { h: { name: 'a/.wh.g', mtime: new Date(1e12) } },
      { h: { name: 'o/.wh..wh..opq' } },
    ]);
    const first = await ingest(layer);
    const packed = async () => {
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (c: Buffer) => chunks.push(c));
      const r = await packLayer(first.dest, out, { opaque: first.opaque });
      return { ...r, bytes: Buffer.concat(chunks) };
    };
    const a = await packed();
    const b = await packed();
    assert.equal(a.diffId, b.diffId);
    assert.equal(a.diffId, sha(a.bytes));
    const again = await ingest(a.bytes);
    assert.equal(await readFile(join(again.dest, 'a/f'), 'utf8'), 'x');
    assert.ok((await lstat(join(again.dest, 'a/g'))).isCharacterDevice());
    assert.deepEqual(again.opaque, ['o']);
  });

  test('entries outside the root are refused: `..`, through a symlink, hard links out', async () => {
    const outside = await fresh();
    const cases: [string, { h: Partial<tar.Header> & { name: string }; body?: string }[], RegExp][] = [
      ['dot-dot', [{ h: { name: '../../escaped.txt' }, body: 'evil' }], /outside its root/],
      ['symlink', [{ h: { name: 'evil', type: 'symlink', linkname: outside } }, { h: { name: 'evil/x.txt' }, body: 'evil' }], /through the symlink evil/],
      ['relative symlink', [{ h: { name: 'up', type: 'symlink', linkname: '../..' } }, { h: { name: 'up/x.txt' }, body: 'evil' }], /through the symlink up/],
      ['hard link', [{ h: { name: 'h', type: 'link', linkname: '../../../etc/hostname' } }], /outside its root/],
      ['device', [{ h: { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 } }], /device node/],
    ];
    for (const [what, entries, message] of cases) {
      await assert.rejects(ingest(await makeTar(entries)), refused('UnsafeLayer', message), what);
    }
    assert.equal((await run('ls', ['-A', outside])).stdout, '', 'nothing was written outside');
    await assert.rejects(
      ingest(await makeTar([{ h: { name: 'su', mode: 0o4755 }, body: 'x' }]), { policy: { devices: false, setuid: false } }),
      refused('UnsafeLayer', /setuid/),
    );
    await assert.rejects(ingest(await makeTar([{ h: { name: 'f', uid: 70000 }, body: 'x' }])), refused('UnsafeLayer', /owned by 70000/));
  });

  test('digests, sizes and diff ids are checked', async () => {
    const layer = await makeTar([{ h: { name: 'f' }, body: 'content' }]);
    const other = sha(Buffer.from('other'));
    await assert.rejects(ingest(layer, { digest: other }), refused('DigestMismatch', /has the digest/));
    await assert.rejects(ingest(layer, { diffId: other }), refused('DigestMismatch', /unpacked to/));
    await assert.rejects(ingest(layer, { size: layer.length + 10 }), refused('TruncatedBlob', /ended after/));
    await assert.rejects(ingest(layer, { size: layer.length - 10 }), refused('DigestMismatch', /larger than/));
    await assert.rejects(ingest(layer.subarray(0, 700), { digest: sha(layer.subarray(0, 700)), size: 700 }), /./, 'a truncated tar');
    await assert.rejects(ingest(gzipSync(layer).subarray(0, 30), { mediaType: MEDIA.ociLayerGzip }), /./, 'a truncated gzip');
  });

  test('a zip bomb is stopped at the limit, not after filling the disk', async () => {
    const layer = await makeTar([{ h: { name: 'zeros' }, body: Buffer.alloc(64 * 2 ** 20) }]);
    const gz = gzipSync(layer);
    assert.ok(gz.length < 2 ** 20);
    await assert.rejects(
      ingest(gz, { mediaType: MEDIA.ociLayerGzip, limits: { maxBytes: 8 * 2 ** 20, maxEntries: 100 } }),
      refused('UnsafeLayer', /more than 8388608 bytes/),
    );
    const many = await makeTar(Array.from({ length: 20 }, (_, i) => ({ h: { name: `f${i}` }, body: '' })));
    await assert.rejects(ingest(many, { limits: { maxBytes: 2 ** 30, maxEntries: 10 } }), refused('UnsafeLayer', /more than 10 entries/));
  });

  test('a full disk is a clear 507', async () => {
    const small = await fresh();
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
    try {
      const layer = await makeTar([{ h: { name: 'big' }, body: Buffer.alloc(4 * 2 ** 20, 1) }]);
      const dest = join(small, 'fs');
      await mkdir(dest);
      await assert.rejects(
        ingestLayer(Readable.from([layer]), { mediaType: MEDIA.ociLayer, digest: sha(layer), size: layer.length, dest }),
        (e: Error & { code?: number; reason?: string }) => e.code === 507 && e.reason === 'InsufficientStorage',
      );
    } finally {
      await run('umount', [small]);
    }
  });
});
