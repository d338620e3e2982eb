import { Moat } from '@moat/sdk';
import { configPath, NOT_CONFIGURED, readConfig, resolveConnection, type Connection } from './config.js';
import { CliError } from './errors.js';
import type { Io } from './io.js';

/** Per-invocation state shared by the commands. */
export class Context {
  /** Set by commands whose exit code is not just success/failure (exec, delete of several). */
  exitCode = 0;
  private client?: Moat;

  constructor(readonly io: Io) {}

  out(text: string | Uint8Array): void {
    this.io.stdout.write(text);
  }

  err(text: string | Uint8Array): void {
    this.io.stderr.write(text);
  }

  async connection(): Promise<Connection> {
    const file = configPath(this.io.env);
    return resolveConnection(this.io.env, await readConfig(file), file);
  }

  /** The SDK client for the configured server; fails with a pointer to `moat up` if there is none. */
  async moat(): Promise<Moat> {
    if (this.client) return this.client;
    const conn = await this.connection();
    if (!conn.url) throw new CliError(NOT_CONFIGURED);
    // Pass the key explicitly (even when undefined) so the SDK does not read process.env behind io.env's back.
    this.client = new Moat({ url: conn.url, apiKey: conn.apiKey ?? '', namespace: conn.namespace });
    return this.client;
  }
}
