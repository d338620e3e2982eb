import { mkdir, readFile, rename, writeFile, chmod } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { CliError } from './errors.js';

/** What `moat up` saves so that other terminals find the server. */
export interface ConfigFile {
  url?: string;
  apiKey?: string;
  namespace?: string;
}

export interface Connection {
  url?: string;
  apiKey?: string;
  namespace: string;
  configFile: string;
  urlFrom?: 'env' | 'config';
  apiKeyFrom?: 'env' | 'config';
}

type Env = Record<string, string | undefined>;

export const NOT_CONFIGURED = 'no Moat server configured: run `moat up` or set MOAT_URL and MOAT_API_KEY';

/** $MOAT_CONFIG, else $XDG_CONFIG_HOME/moat/config.json, else ~/.config/moat/config.json. */
export function configPath(env: Env): string {
  if (env.MOAT_CONFIG) return env.MOAT_CONFIG;
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return join(base, 'moat', 'config.json');
}

export async function readConfig(file: string): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  try {
    const cfg = JSON.parse(text) as unknown;
    if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new Error('not an object');
    return cfg as ConfigFile;
  } catch (err) {
    throw new CliError(`config file ${file} is not valid JSON (${(err as Error).message}): fix or delete it, then run \`moat up\``);
  }
}

/** Written atomically and readable by the owner only: it holds an admin key. */
export async function writeConfig(file: string, cfg: ConfigFile): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(cfg, null, 2) + '\n', { mode: 0o600 });
  await chmod(tmp, 0o600); // in case the file pre-existed with a looser mode
  await rename(tmp, file);
}

/**
 * Env overrides the file, field by field, with one exception: the file's key is
 * only used for the file's server, so pointing MOAT_URL elsewhere never sends
 * that admin key to another host.
 */
export function resolveConnection(env: Env, file: ConfigFile, configFile: string): Connection {
  const conn: Connection = { namespace: env.MOAT_NAMESPACE || file.namespace || 'default', configFile };
  if (env.MOAT_URL) [conn.url, conn.urlFrom] = [env.MOAT_URL, 'env'];
  else if (file.url) [conn.url, conn.urlFrom] = [file.url, 'config'];
  if (env.MOAT_API_KEY) [conn.apiKey, conn.apiKeyFrom] = [env.MOAT_API_KEY, 'env'];
  else if (file.apiKey && (conn.urlFrom === 'config' || sameUrl(conn.url, file.url))) [conn.apiKey, conn.apiKeyFrom] = [file.apiKey, 'config'];
  return conn;
}

function sameUrl(a: string | undefined, b: string | undefined): boolean {
  return !!a && !!b && a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
}

/** Enough of a key to tell keys apart, never enough to use it. */
export function keyHint(key: string | undefined): string | undefined {
  if (!key) return undefined;
  return key.length >= 20 ? `${key.slice(0, 6)}…` : '(set)';
}
