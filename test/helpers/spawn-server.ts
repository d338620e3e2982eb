import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { TestServer } from './server.js';

/**
 * A server in a child process: the test kills it with SIGKILL like a crash would. `script`: the process to run
 * (server-process.ts, a server on this host; cluster-server-process.ts, one in cluster mode).
 */
export async function spawnServer(
  dataDir: string,
  env: Record<string, string> = {},
  script = 'server-process.ts',
): Promise<{ child: ChildProcess; server: TestServer }> {
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', join(import.meta.dirname, script), dataDir], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
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

/** Resolves once the child has exited (at once if it already has): a server that killed itself at a crash point. */
export const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));

/** SIGKILL, as a crash would; a server already gone is fine. */
export const kill = (child: ChildProcess) => {
  const gone = exited(child);
  child.kill('SIGKILL');
  return gone;
};
