import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { NS, createReady, sh, type TestServer } from '../helpers/server.js';

/** A server in a child process: the test kills it with SIGKILL like a crash would. */
async function spawnServer(dataDir: string): Promise<{ child: ChildProcess; server: TestServer }> {
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', join(import.meta.dirname, '../helpers/server-process.ts'), dataDir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const { url, adminKey } = JSON.parse(line) as { url: string; adminKey: string };
  const api = (path: string, init: RequestInit & { json?: unknown } = {}) =>
    fetch(url + path, {
      ...init,
      headers: { authorization: `Bearer ${adminKey}`, ...(init.json ? { 'content-type': 'application/json' } : {}) },
      body: init.json ? JSON.stringify(init.json) : init.body,
    });
  return { child, server: { url, adminKey, dataDir, api, close: async () => {} } as TestServer };
}

const kill = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });

describe('control-plane crash recovery', () => {
  let dataDir: string;
  let live: { child: ChildProcess; server: TestServer } | undefined;
  after(async () => {
    if (live) {
      await live.server.api(`${NS}/keep?wait=true`, { method: 'DELETE' });
      await kill(live.child);
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  test('SIGKILL of the server: sandboxes keep running and are re-adopted; orphans are removed', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'moat-restart-'));
    live = await spawnServer(dataDir);
    let { child, server } = live;
    await createReady(server, 'keep');
    const orphan = await createReady(server, 'orphan');
    await sh(server, 'keep', 'echo state > /data/f; nohup sh -c \'echo $$ > /tmp/loop.pid; while true; do sleep 1; done\' >/dev/null 2>&1 &');
    await new Promise((r) => setTimeout(r, 200));
    const alive = 'kill -0 $(cat /tmp/loop.pid) && cat /tmp/loop.pid';
    const before = (await sh(server, 'keep', alive)).stdout.trim();
    assert.match(before, /^\d+$/);

    await kill(child);
    live = undefined;
    // A record lost with the crash: its sandbox is now an orphan that nothing points to.
    const db = new Database(join(dataDir, 'moat.db'));
    db.prepare('DELETE FROM sandboxes WHERE name = ?').run('orphan');
    db.close();

    live = await spawnServer(dataDir);
    ({ child, server } = live);
    const s = (await (await server.api(`${NS}/keep`)).json()) as any;
    assert.equal(s.status.phase, 'Running');
    const afterPid = (await sh(server, 'keep', `${alive}; cat /data/f`)).stdout;
    assert.equal(afterPid, `${before}\nstate\n`, 'the same process is still running, /data intact');

    const orphanDir = join(dataDir, 'sandboxes', orphan.metadata.uid);
    await assert.rejects(access(orphanDir), 'orphan directory removed');
    assert.ok(!(await readFile('/proc/self/mountinfo', 'utf8')).includes(orphan.metadata.uid), 'orphan mounts removed');
    const list = spawn('runc', ['--root', join(dataDir, 'runtime', 'runc'), 'list', '-q']);
    let ids = '';
    list.stdout.on('data', (d) => (ids += d));
    await new Promise((r) => list.on('close', r));
    assert.ok(!ids.includes(orphan.metadata.uid), 'orphan container removed');
  });
});
