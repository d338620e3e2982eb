import { readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { HibernateResult } from '../drivers/types.js';

/**
 * A hibernated sandbox's saved state lives in `<sandbox dir>/checkpoint/`;
 * `complete.json` is written last, so a hibernate cut short by a crash
 * leaves no state that could be mistaken for a restorable one.
 */
export const checkpointDir = (sandboxDir: string) => join(sandboxDir, 'checkpoint');

export interface CheckpointInfo {
  runtime: string;
  bytes: number;
  createdAt: string;
}

/** Removes any saved state (complete or not) and makes an empty checkpoint directory. */
export async function startCheckpoint(sandboxDir: string): Promise<string> {
  const dir = checkpointDir(sandboxDir);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

export async function completeCheckpoint(sandboxDir: string, runtime: string): Promise<CheckpointInfo> {
  const dir = checkpointDir(sandboxDir);
  const info: CheckpointInfo = { runtime, bytes: await treeBytes(dir), createdAt: new Date().toISOString() };
  await writeFile(join(dir, 'complete.json'), JSON.stringify(info));
  return info;
}

export async function readCheckpoint(sandboxDir: string): Promise<CheckpointInfo | undefined> {
  const text = await readFile(join(checkpointDir(sandboxDir), 'complete.json'), 'utf8').catch(() => undefined);
  return text ? (JSON.parse(text) as CheckpointInfo) : undefined;
}

/** A hibernate asked of a sandbox that is not running: saved already (asked again after a crash), or there is nothing to save. */
export async function savedBefore(sandboxDir: string, state: string, what: string): Promise<HibernateResult> {
  const info = await readCheckpoint(sandboxDir);
  return info ? { checkpointed: true, bytes: info.bytes } : { checkpointed: false, reason: `the ${what} was ${state}` };
}

export async function clearCheckpoint(sandboxDir: string): Promise<void> {
  await rm(checkpointDir(sandboxDir), { recursive: true, force: true });
}

/** Bytes of every regular file under a directory (the disk the saved state takes). */
export async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await treeBytes(p);
    else if (e.isFile()) total += (await stat(p)).size;
  }
  return total;
}

/** The last error lines of a CRIU log: what to tell the user when a checkpoint or restore fails. */
export async function criuErrors(log: string): Promise<string> {
  const text = await readFile(log, 'utf8').catch(() => '');
  const lines = text.split('\n').filter((l) => /Error|error|fail/.test(l));
  return lines
    .slice(-3)
    .map((l) => l.replace(/^\(\s*[\d.]+\)\s*/, '').trim())
    .join('; ');
}
