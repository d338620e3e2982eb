import type { KubeObject } from '@moat/sdk';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import YAML from 'yaml';
import { CliError } from './errors.js';
import type { Io } from './io.js';
import { readAll } from './streams.js';

export interface Manifest {
  object: KubeObject;
  /** "FILE document N", for messages. */
  where: string;
}

export async function readManifestFile(io: Io, file: string): Promise<Manifest[]> {
  const text = file === '-' ? (await readAll(io.stdin)).toString('utf8') : await readFile(resolve(io.cwd, file), 'utf8');
  return parseManifests(text, file === '-' ? 'stdin' : file);
}

/** Multi-document YAML (or JSON); empty documents are skipped and `kind: List` is flattened. */
export function parseManifests(text: string, source: string): Manifest[] {
  const out: Manifest[] = [];
  YAML.parseAllDocuments(text).forEach((doc, i) => {
    const where = `${source} document ${i + 1}`;
    if (doc.errors.length) throw new CliError(`${where}: ${doc.errors[0].message}`);
    const value = doc.toJS() as unknown;
    if (value === null || value === undefined) return;
    const items = isObject(value) && value.kind === 'List' && Array.isArray(value.items) ? value.items : [value];
    items.forEach((item: unknown, j: number) => {
      const at = items.length > 1 || item !== value ? `${where} item ${j + 1}` : where;
      if (!isObject(item)) throw new CliError(`${at}: expected an object with apiVersion, kind and metadata`);
      if (!isObject(item.metadata)) throw new CliError(`${at}: missing "metadata"`);
      out.push({ object: item as KubeObject, where: at });
    });
  });
  if (out.length === 0) throw new CliError(`${source}: no objects found`);
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Does the live spec already say everything the manifest says? Fields the
 * manifest leaves out are ignored, since the server fills in defaults; numbers
 * and strings compare by text, since quantities may be written either way.
 */
export function specMatches(want: unknown, have: unknown): boolean {
  if (want === undefined || want === null) return true;
  if (Array.isArray(want)) return Array.isArray(have) && want.length === have.length && want.every((w, i) => specMatches(w, have[i]));
  if (isObject(want)) return isObject(have) && Object.entries(want).every(([k, v]) => specMatches(v, have[k]));
  if (typeof want === 'number' || typeof have === 'number') return String(want) === String(have);
  return want === have;
}
