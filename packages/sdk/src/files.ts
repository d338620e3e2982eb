import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { MoatError } from './errors.js';
import type { HttpClient } from './http.js';
import type { Entry } from './types.js';

export interface FileOptions {
  /** Whose permissions apply inside the sandbox (default `root`). */
  user?: string;
}

/** File operations inside one sandbox; every `path` is absolute in the sandbox. */
export class Files {
  constructor(
    private readonly http: HttpClient,
    private readonly sandboxPath: string,
  ) {}

  private path(suffix: string): string {
    return `${this.sandboxPath}/files${suffix}`;
  }

  read(path: string, opts: FileOptions = {}): Promise<Buffer> {
    return this.http.buffer('GET', this.path('/content'), { query: { path, user: opts.user }, timeoutMs: null });
  }

  async readText(path: string, opts: FileOptions = {}): Promise<string> {
    return (await this.read(path, opts)).toString('utf8');
  }

  /** Creates missing parent directories. `mode` is octal, as a string ("0755") or a number (0o755). */
  write(path: string, data: string | Uint8Array, opts: FileOptions & { mode?: string | number } = {}): Promise<Entry> {
    const mode = typeof opts.mode === 'number' ? opts.mode.toString(8).padStart(4, '0') : opts.mode;
    return this.http.json<Entry>('PUT', this.path('/content'), { query: { path, mode, user: opts.user }, body: data, timeoutMs: null });
  }

  async list(path: string, opts: FileOptions = {}): Promise<Entry[]> {
    const res = await this.http.json<{ items: Entry[] }>('GET', this.path('/list'), { query: { path, user: opts.user } });
    return res?.items ?? [];
  }

  /** Does not follow a final symlink. */
  stat(path: string, opts: FileOptions = {}): Promise<Entry> {
    return this.http.json<Entry>('GET', this.path('/stat'), { query: { path, user: opts.user } });
  }

  async exists(path: string, opts: FileOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, opts);
      return true;
    } catch (err) {
      if (err instanceof MoatError && err.code === 404) return false;
      throw err;
    }
  }

  async remove(path: string, opts: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    await this.http.request('DELETE', this.path(''), { query: { path, recursive: opts.recursive ?? false, user: opts.user } });
  }

  mkdir(path: string, opts: FileOptions & { parents?: boolean } = {}): Promise<Entry> {
    return this.http.json<Entry>('POST', this.path('/mkdir'), { query: { path, parents: opts.parents ?? true, user: opts.user } });
  }

  rename(from: string, to: string, opts: FileOptions = {}): Promise<Entry> {
    return this.http.json<Entry>('POST', this.path('/rename'), { query: { user: opts.user }, json: { from, to } });
  }

  /** The tree under `path` as a tar stream (entry names relative to `path`). */
  async downloadTarStream(path: string, opts: FileOptions = {}): Promise<Readable> {
    const res = await this.http.request('GET', this.path('/archive'), { query: { path, user: opts.user }, timeoutMs: null });
    if (!res.body) return Readable.from([]);
    return Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>);
  }

  async downloadTar(path: string, opts: FileOptions = {}): Promise<Buffer> {
    return this.http.buffer('GET', this.path('/archive'), { query: { path, user: opts.user }, timeoutMs: null });
  }

  /** Extract a tar under `path`. */
  uploadTar(path: string, tar: Uint8Array, opts: FileOptions = {}): Promise<{ files: number; bytes: number }> {
    return this.http.json('PUT', this.path('/archive'), { query: { path, user: opts.user }, body: tar, contentType: 'application/x-tar', timeoutMs: null });
  }
}
