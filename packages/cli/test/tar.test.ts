import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import tar from 'tar-stream';
import { extractTar, packDirectory, safeParts } from '../src/tar.js';

const dirs: string[] = [];
const tmp = async () => {
  const d = await mkdtemp(join(tmpdir(), 'moat-tar-'));
  dirs.push(d);
  return d;
};
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

/** A tar built by hand, so tests can contain what a hostile sandbox might send. */
async function tarOf(
  entries: { name: string; type?: 'file' | 'directory' | 'symlink' | 'link'; body?: string; linkname?: string; mode?: number }[],
): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    await new Promise<void>((res, rej) =>
      pack.entry({ name: e.name, type: e.type ?? 'file', linkname: e.linkname, mode: e.mode }, e.body ?? '', (err) => (err ? rej(err) : res())),
    );
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

test('a directory survives pack and extract: contents, modes, symlinks', async () => {
  const src = await tmp();
  await mkdir(join(src, 'sub', 'deep'), { recursive: true });
  await writeFile(join(src, 'a.txt'), 'hello');
  await writeFile(join(src, 'sub', 'run.sh'), '#!/bin/sh\n', { mode: 0o755 });
  await writeFile(join(src, 'sub', 'deep', 'bin'), Buffer.from([0, 255, 1]));
  await symlink('a.txt', join(src, 'link'));
  const archive = await packDirectory(src);

  const dest = join(await tmp(), 'out');
  const { files } = await extractTar(Readable.from([archive]), dest);
  assert.equal(files, 3);
  assert.equal(await readFile(join(dest, 'a.txt'), 'utf8'), 'hello');
  assert.deepEqual([...(await readFile(join(dest, 'sub', 'deep', 'bin')))], [0, 255, 1]);
  assert.equal((await stat(join(dest, 'sub', 'run.sh'))).mode & 0o100, 0o100, 'still executable');
  assert.equal(await readlink(join(dest, 'link')), 'a.txt');
});

test('entry names that escape the destination are refused', async () => {
  assert.deepEqual(safeParts('./a/./b/'), ['a', 'b']);
  assert.throws(() => safeParts('../x'), /contains "\.\."/);
  assert.throws(() => safeParts('a/../../x'), /contains "\.\."/);
  assert.throws(() => safeParts('/etc/passwd'), /absolute/);
  const dest = await tmp();
  await assert.rejects(extractTar(Readable.from([await tarOf([{ name: '../evil', body: 'x' }])]), join(dest, 'out')), /contains "\.\."/);
  await assert.rejects(lstat(join(dest, 'evil')));
});

test('a symlink in the archive cannot be used to write outside the destination', async () => {
  const outside = await tmp();
  const dest = join(await tmp(), 'out');
  const archive = await tarOf([
    { name: 'esc', type: 'symlink', linkname: outside },
    { name: 'esc/pwned', body: 'x' },
  ]);
  await assert.rejects(extractTar(Readable.from([archive]), dest), /through the symlink/);
  await assert.rejects(lstat(join(outside, 'pwned')));
});

test('a file entry replaces a symlink instead of writing through it', async () => {
  const outside = await tmp();
  await writeFile(join(outside, 'target'), 'original');
  const dest = join(await tmp(), 'out');
  const archive = await tarOf([
    { name: 'f', type: 'symlink', linkname: join(outside, 'target') },
    { name: 'f', body: 'replaced' },
  ]);
  await extractTar(Readable.from([archive]), dest);
  assert.equal(await readFile(join(outside, 'target'), 'utf8'), 'original');
  assert.equal(await readFile(join(dest, 'f'), 'utf8'), 'replaced');
});

test('hard links are skipped with a warning; setuid bits are dropped', async () => {
  const dest = join(await tmp(), 'out');
  const warnings: string[] = [];
  const archive = await tarOf([
    { name: 'suid', body: 'x', mode: 0o4755 },
    { name: 'hard', type: 'link', linkname: '/etc/passwd' },
  ]);
  await extractTar(Readable.from([archive]), dest, (m) => warnings.push(m));
  assert.equal((await stat(join(dest, 'suid'))).mode & 0o4000, 0);
  await assert.rejects(lstat(join(dest, 'hard')));
  assert.match(warnings.join('\n'), /hard: link entries are not extracted/);
});
